//! Flavors and images: the catalog's instance types and templates, as offered in the path's region.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use serde_json::Value;

use super::common::{page, query_bool, query_one, query_pairs, InRegion, RegionItem};
use super::errors::{GcoreError, GcoreResult};
use super::views;
use crate::AppState;

pub async fn flavors(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let prices = query_bool(&q, "include_prices");
    let show_disabled = query_bool(&q, "disabled");
    let all = app
        .engine
        .list_instance_types()
        .await?
        .iter()
        .filter(|t| t.zones.contains(&r.zone.name))
        .filter(|t| t.authorized || show_disabled)
        .map(|t| views::flavor(t, prices))
        .collect();
    page(all, &q)
}

pub async fn images(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let scope = r.scope();
    let name = query_one(&q, "name");
    let distro = query_one(&q, "os_distro");
    let version = query_one(&q, "os_version");
    let visibility = query_one(&q, "visibility");
    let private = query_bool(&q, "private");
    let all = app
        .engine
        .list_templates(&r.ctx)
        .await?
        .iter()
        .map(|t| views::image(t, &scope))
        .filter(|v| name.is_none_or(|n| v["name"].as_str().is_some_and(|x| x.contains(n))))
        .filter(|v| distro.is_none_or(|d| v["os_distro"] == d))
        .filter(|v| version.is_none_or(|d| v["os_version"] == d))
        .filter(|v| visibility.is_none_or(|d| v["visibility"] == d))
        .filter(|v| !private || v["visibility"] == "private")
        .collect();
    page(all, &q)
}

pub async fn image(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let template = app
        .engine
        .template(&r.ctx, &id)
        .await
        .map_err(|_| GcoreError::not_found(format!("Image {id} could not be found")))?;
    Ok(Json(views::image(&template, &r.scope())))
}
