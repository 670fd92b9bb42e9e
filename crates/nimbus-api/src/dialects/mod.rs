//! Wire-compatible APIs of other clouds. Each dialect lives in its own folder, translates the provider's
//! requests into calls of the engine's services and renders the provider's responses and errors; none holds
//! business logic of its own. Mounted beside the native API (paths in DESIGN.md's dialect table).

use axum::Router;

use crate::AppState;

pub mod exoscale;
pub mod gcore;
pub mod onet;
pub mod sfcompute;
pub mod sharedcloud;

pub fn router(_state: AppState) -> Router<AppState> {
    Router::new()
        .merge(sfcompute::router(_state.clone()))
        .merge(onet::router(_state.clone()))
        .merge(sharedcloud::router(_state.clone()))
        .merge(gcore::router(_state.clone()))
        .merge(exoscale::router(_state.clone()))
}
