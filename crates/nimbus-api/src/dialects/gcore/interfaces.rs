//! The instance's network interfaces: Nimbus gives each instance one, on the zone's instance network.

use axum::http::Uri;
use axum::Json;
use serde_json::Value;

use super::common::{page, query_pairs, OneInstance};
use super::errors::GcoreResult;
use super::views;

pub async fn list(OneInstance(r, instance): OneInstance, uri: Uri) -> GcoreResult<Json<Value>> {
    page(vec![views::interface(&instance, &r.scope())], &query_pairs(&uri))
}
