//! Wire-compatible APIs of other clouds. Each dialect lives in its own folder, translates the provider's
//! requests into calls of the engine's services and renders the provider's responses and errors; none holds
//! business logic of its own. Mounted beside the native API (paths in DESIGN.md's dialect table).

use crate::routes::Routes;
use crate::AppState;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};

pub mod common;
pub mod exoscale;
pub mod gcore;
pub mod onet;
pub mod sfcompute;
pub mod sharedcloud;

pub fn router(_state: AppState) -> Routes {
    Routes::new()
        .merge(sfcompute::router(_state.clone()))
        .merge(onet::router(_state.clone()))
        .merge(sharedcloud::router(_state.clone()))
        .merge(gcore::router(_state.clone()))
        .merge(exoscale::router(_state.clone()))
}

/// The answer to a request no route takes: under a dialect's prefix, that provider's 404 in its own error
/// shape (its clients parse nothing else); anywhere else, the native one. Unknown methods of known paths
/// are each route's own fallback.
pub async fn unknown_route(uri: Uri) -> Response {
    let path = uri.path();
    // SF Compute's `/v2/instances...` are inside Exoscale's `/v2`: asked first.
    if sfcompute::owns(path) {
        sfcompute::errors::unknown_route(uri).await.into_response()
    } else if exoscale::owns(path) {
        exoscale::errors::unknown_route().await.into_response()
    } else if gcore::owns(path) {
        gcore::errors::unknown_route(uri).await.into_response()
    } else if onet::owns(path) {
        common::drf::unknown_route::<onet::errors::Onet>().await.into_response()
    } else if sharedcloud::owns(path) {
        common::drf::unknown_route::<sharedcloud::errors::SharedCloud>().await.into_response()
    } else {
        crate::error::unknown_route(uri).await.into_response()
    }
}
