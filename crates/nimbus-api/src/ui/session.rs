//! Signing in and out of the web console, and the session cookie the `/v1` authentication accepts.
//!
//! `POST /ui/session` takes an API key or an account's username and password and answers with two
//! cookies: `nimbus_session` (HttpOnly, so no script can read it) and `nimbus_csrf`, which the page reads
//! and sends back as the `X-CSRF-Token` header with every change. Both are `SameSite=Strict`; the header
//! is the second lock, for browsers or proxies that would let a cross-site request carry the cookie. A
//! request with an `Origin` header must come from this server's own origin (a websocket opened by another
//! site always sends one). The cookies carry no `Secure` flag because `nimbus server` speaks plain HTTP
//! (TLS, where used, ends at a proxy in front); a proxy serving HTTPS may add it.

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::DomainError;
use nimbus_engine::web_sessions::{CsrfCheck, WEB_SESSION_LIFETIME};
use nimbus_engine::Context;
use serde::Deserialize;
use serde_json::json;

use crate::auth::actor_of;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub const SESSION_COOKIE: &str = "nimbus_session";
pub const CSRF_COOKIE: &str = "nimbus_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How to sign in: an API key's secret, or an account's username and password.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SignIn {
    ApiKey { api_key: String },
    Password { username: String, password: String },
}

pub async fn sign_in(State(app): State<AppState>, parts: Parts, body: axum::body::Bytes) -> ApiResult<Response> {
    let sign_in: SignIn = crate::extract::parse_json(&body).map_err(|_| {
        ApiError::bad_request("send {\"api_key\": \"...\"} or {\"username\": \"...\", \"password\": \"...\"}")
    })?;
    let ctx = match sign_in {
        SignIn::ApiKey { api_key } => {
            let api_key = api_key.trim();
            if api_key.is_empty() {
                return Err(ApiError::bad_request("enter an API key"));
            }
            app.engine.authenticate_secret(api_key, actor_of(&parts)).await?
        }
        SignIn::Password { username, password } => {
            let source = actor_of(&parts).source;
            let (_, key) = app
                .engine
                .log_in(source.as_deref(), username.trim(), &password)
                .await
                // The engine's refusal is worded for SharedCloud's CLI; a person reads this one. Other
                // errors (the store failing) keep their own words.
                .map_err(|e| match e {
                    DomainError::Unauthenticated(_) => {
                        DomainError::Unauthenticated("wrong username or password".into())
                    }
                    other => other,
                })?;
            app.engine.context_for_key(key, actor_of(&parts)).await?
        }
    };
    let session = app.engine.open_web_session(&ctx).await?;
    let max_age = WEB_SESSION_LIFETIME.as_secs();
    let mut response =
        (StatusCode::CREATED, Json(json!({ "key_id": ctx.key.key_id, "role": ctx.role().as_str() }))).into_response();
    let cookies = [
        format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}", session.token),
        format!("{CSRF_COOKIE}={}; Path=/; SameSite=Strict; Max-Age={max_age}", session.csrf_token),
    ];
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    }
    Ok(response)
}

/// Ends the session and clears both cookies. Needs the CSRF header, so another site cannot sign you out.
pub async fn sign_out(State(app): State<AppState>, parts: Parts) -> ApiResult<Response> {
    if let Some(token) = cookie(&parts.headers, SESSION_COOKIE) {
        authenticate(&parts, &app, token).await?;
        app.engine.close_web_session(token).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        let cleared = format!("{name}=; Path=/; SameSite=Strict; Max-Age=0");
        response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&cleared).expect("ASCII"));
    }
    Ok(response)
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The caller a session cookie stands for: the session must be live, its key must still exist, a request
/// from a browser must come from this origin, and a change must carry the session's CSRF token.
pub async fn authenticate(parts: &Parts, app: &AppState, token: &str) -> Result<Context, ApiError> {
    if let Some(origin) = parts.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if origin_host != host {
            return Err(DomainError::Forbidden(format!(
                "a request from {origin} may not use this server's web console session"
            ))
            .into());
        }
    }
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let csrf = if safe {
        CsrfCheck::NotNeeded
    } else {
        CsrfCheck::Given(parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()))
    };
    Ok(app.engine.authenticate_web_session(token, csrf, actor_of(parts)).await?)
}
