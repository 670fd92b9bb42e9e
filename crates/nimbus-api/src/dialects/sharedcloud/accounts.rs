//! What `sharedcloud-cli` needs around instances: registering an account (`POST /api/v1/users/`), seeing it
//! (`GET /api/v1/users/`), changing it (`PATCH /api/v1/users/account/`: `account update` and
//! `account change_password`), deleting it (`DELETE /api/v1/users/account/`) and logging in for a token
//! (`POST /api/v1/api-token-auth/`, DRF's `obtain_auth_token`). Accounts are the engine's; the token is the
//! secret of the account's login API key.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::DomainError;
use nimbus_engine::{AccountPatch, NewAccount};
use serde_json::{json, Map, Value};

use super::errors::{FieldErrors, ScError, ScResult};
use super::handlers::{body_object, ScCaller};
use super::views;
use crate::auth::SourceAddress;
use crate::AppState;

/// The required string fields of a body, with DRF's messages for missing and blank ones.
fn strings<const N: usize>(map: &Map<String, Value>, keys: [&str; N]) -> ScResult<[String; N]> {
    let mut e = FieldErrors::default();
    let values = keys.map(|key| match map.get(key) {
        None => {
            e.add(key, "This field is required.");
            String::new()
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            e.add(key, "This field may not be blank.");
            String::new()
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) => {
            e.add(key, "This field may not be null.");
            String::new()
        }
        Some(_) => {
            e.add(key, "Not a valid string.");
            String::new()
        }
    });
    e.check()?;
    Ok(values)
}

/// Registration needs no credentials.
pub async fn register(
    State(app): State<AppState>,
    source: SourceAddress,
    headers: HeaderMap,
    body: Bytes,
) -> ScResult<Response> {
    let map = body_object(&headers, &body)?;
    let [email, username, password] = strings(&map, ["email", "username", "password"])?;
    let account = app.engine.register_account(source.0.as_deref(), NewAccount { username, email, password }).await?;
    Ok((StatusCode::CREATED, Json(views::user(&account, nimbus_core::now()))).into_response())
}

/// The caller's own user, alone in a list; a key that belongs to no account sees none.
pub async fn list(State(app): State<AppState>, ScCaller(ctx): ScCaller) -> ScResult<Json<Value>> {
    match app.engine.account(&ctx).await {
        Ok(account) => Ok(Json(json!([views::user(&account, nimbus_core::now())]))),
        Err(DomainError::NotFound { .. }) => Ok(Json(json!([]))),
        Err(e) => Err(e.into()),
    }
}

/// The optional string fields of a body: absent ones are `None`, blank or non-string ones refused as DRF
/// refuses them.
fn optional_strings<const N: usize>(map: &Map<String, Value>, keys: [&str; N]) -> ScResult<[Option<String>; N]> {
    let mut e = FieldErrors::default();
    let values = keys.map(|key| match map.get(key) {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => {
            e.add(key, "This field may not be blank.");
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) => {
            e.add(key, "This field may not be null.");
            None
        }
        Some(_) => {
            e.add(key, "Not a valid string.");
            None
        }
    });
    e.check()?;
    Ok(values)
}

/// PATCH (and PUT) of the caller's own user: any of `email`, `username`, `password`, checked as
/// registration checks them. The token stays valid, as DRF's does; the CLI logs out afterwards anyway.
pub async fn update(
    State(app): State<AppState>,
    ScCaller(ctx): ScCaller,
    headers: HeaderMap,
    body: Bytes,
) -> ScResult<Json<Value>> {
    let map = body_object(&headers, &body)?;
    let [email, username, password] = optional_strings(&map, ["email", "username", "password"])?;
    let account = app.engine.update_account(&ctx, AccountPatch { username, email, password }).await?;
    Ok(Json(views::user(&account, nimbus_core::now())))
}

pub async fn delete(State(app): State<AppState>, ScCaller(ctx): ScCaller) -> ScResult<StatusCode> {
    app.engine.delete_account(&ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn log_in(
    State(app): State<AppState>,
    source: SourceAddress,
    headers: HeaderMap,
    body: Bytes,
) -> ScResult<Json<Value>> {
    let map = body_object(&headers, &body)?;
    let [username, password] = strings(&map, ["username", "password"])?;
    match app.engine.log_in(source.0.as_deref(), &username, &password).await {
        Ok((_, key)) => Ok(Json(json!({ "token": key.secret }))),
        Err(DomainError::Unauthenticated(m)) => Err(ScError::non_field(m)),
        Err(e) => Err(e.into()),
    }
}
