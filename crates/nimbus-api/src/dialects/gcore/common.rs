//! What every Gcore endpoint shares: the `APIKey` caller, the project and region of the path, the
//! instance it names, query and body parsing, and the `{"tasks": [...]}` and offset-page answers.

use axum::body::Bytes;
use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::Json;
use nimbus_core::catalog::Zone;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_core::DomainError;
use nimbus_engine::Context;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::views::Scope;
use crate::AppState;

crate::dialects::common::key_caller!(GcoreCaller, GcoreError, "APIKey");

impl crate::dialects::common::CredentialErrors for GcoreError {
    fn missing_credentials() -> GcoreError {
        GcoreError::missing_credentials()
    }
    fn invalid_credentials() -> GcoreError {
        GcoreError::invalid_key()
    }
}

/// The path parameters of a request, by name.
async fn path_params(parts: &mut Parts, state: &AppState) -> GcoreResult<HashMap<String, String>> {
    let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map_err(|e| GcoreError::bad_request(e.body_text()))?;
    Ok(params)
}

/// A request under `/{project_id}/{region_id}`: the caller authenticated first (401 before 404), then the
/// path's project and region checked against its key.
pub(super) struct InRegion(pub Region);

impl FromRequestParts<AppState> for InRegion {
    type Rejection = GcoreError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let GcoreCaller(ctx) = GcoreCaller::from_request_parts(parts, state).await?;
        let params = path_params(parts, state).await?;
        let param = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
        Ok(InRegion(region(state, ctx, param("project_id"), param("region_id")).await?))
    }
}

/// A request under `/{project_id}/{region_id}/{id}`: its region, and the id of what the path names.
pub(super) struct RegionItem(pub Region, pub String);

impl FromRequestParts<AppState> for RegionItem {
    type Rejection = GcoreError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let InRegion(r) = InRegion::from_request_parts(parts, state).await?;
        let Path((_, _, id)) = Path::<(String, String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| GcoreError::bad_request(e.body_text()))?;
        Ok(RegionItem(r, id))
    }
}

/// A request under `/{project_id}/{region_id}/{instance_id}`: its region, and the instance of the project it
/// names (any other id is not found).
pub(super) struct OneInstance(pub Region, pub Instance);

impl FromRequestParts<AppState> for OneInstance {
    type Rejection = GcoreError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let InRegion(r) = InRegion::from_request_parts(parts, state).await?;
        let params = path_params(parts, state).await?;
        let instance = find(state, &r, params.get("instance_id").map(String::as_str).unwrap_or("")).await?;
        Ok(OneInstance(r, instance))
    }
}

/// What every request under a project and region needs: the caller, and the zone the region stands for.
pub(super) struct Region {
    pub(super) ctx: Context,
    pub(super) zone: Zone,
    pub(super) cidr: String,
}

impl Region {
    pub(super) fn scope(&self) -> Scope<'_> {
        Scope { project_id: self.ctx.project.numeric_id, zone: &self.zone, network_cidr: &self.cidr }
    }
}

/// The path's project and region must be the key's project and this server's zone; any other looks like
/// nothing at all.
async fn region(app: &AppState, ctx: Context, project_id: &str, region_id: &str) -> GcoreResult<Region> {
    if project_id.parse::<i64>().ok() != Some(ctx.project.numeric_id) {
        return Err(GcoreError::not_found(format!("Project {project_id} could not be found")));
    }
    let zone = app.engine.zone().await?;
    if region_id.parse::<i64>().ok() != Some(zone.numeric_id) {
        return Err(GcoreError::not_found(format!("Region {region_id} could not be found")));
    }
    Ok(Region { ctx, zone, cidr: app.engine.config().network_cidr.clone() })
}

/// The `what` of the path found by `lookup`: an id that is no UUID, or none of the project's, is "`what` `id`
/// could not be found" (another project's ids look like nothing at all).
pub(super) async fn found<T, F>(what: &str, id: &str, lookup: impl FnOnce(Uuid) -> F) -> GcoreResult<T>
where
    F: std::future::Future<Output = Result<T, DomainError>>,
{
    let not_found = || GcoreError::not_found(format!("{what} {id} could not be found"));
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    lookup(uuid).await.map_err(|e| match e {
        DomainError::NotFound { .. } => not_found(),
        other => other.into(),
    })
}

/// The instance of the path.
async fn find(app: &AppState, r: &Region, id: &str) -> GcoreResult<Instance> {
    found("Instance", id, |id| app.engine.instance(&r.ctx, id)).await
}

pub(super) fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub(super) fn query_one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub(super) fn query_all<'a>(pairs: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

pub(super) fn query_usize(pairs: &[(String, String)], key: &str) -> GcoreResult<Option<usize>> {
    query_one(pairs, key)
        .map(|v| v.parse::<usize>().map_err(|_| GcoreError::field(key, "Input should be a valid integer")))
        .transpose()
}

pub(super) fn query_bool(pairs: &[(String, String)], key: &str) -> bool {
    query_one(pairs, key).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A required string field of a body.
pub(super) fn required_str<'a>(map: &'a Map<String, Value>, key: &str) -> GcoreResult<&'a str> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(GcoreError::field(key, "Input should be a valid string")),
        None => Err(GcoreError::field(key, "Field required")),
    }
}

/// A string field that may be left out or null; anything else is noted in `errors`.
pub(super) fn optional_str<'a>(map: &'a Map<String, Value>, key: &str, errors: &mut FieldErrors) -> Option<&'a str> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.add(key, "Input should be a valid string");
            None
        }
    }
}

/// The request's JSON body as an object (`body_object`), for handlers that read it before anything else.
pub(super) struct BodyMap(pub Map<String, Value>);

impl FromRequest<AppState> for BodyMap {
    type Rejection = axum::response::Response;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        body_object(&body).map(BodyMap).map_err(IntoResponse::into_response)
    }
}

/// The JSON body as an object (an empty body is an empty object).
pub(super) fn body_object(body: &Bytes) -> GcoreResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GcoreError::field("body", "Input should be a valid dictionary")),
        Err(e) => Err(GcoreError::field("body", format!("Invalid JSON: {e}"))),
    }
}

pub(super) fn tasks(ops: &[&Operation]) -> Json<Value> {
    Json(json!({ "tasks": ops.iter().map(|op| op.id).collect::<Vec<_>>() }))
}

pub(super) fn parse_time(key: &str, v: &str) -> GcoreResult<time::OffsetDateTime> {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| GcoreError::field(key, "Input should be a valid datetime"))
}

pub(super) fn page(all: Vec<Value>, q: &[(String, String)]) -> GcoreResult<Json<Value>> {
    let offset = query_usize(q, "offset")?.unwrap_or(0);
    let limit = query_usize(q, "limit")?.unwrap_or(usize::MAX);
    let count = all.len();
    let results: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    Ok(Json(json!({ "count": count, "results": results })))
}
