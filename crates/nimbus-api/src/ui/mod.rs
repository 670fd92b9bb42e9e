//! The web console: a browser front end served by the same binary, under `/ui/`.
//!
//! The pages are plain HTML, CSS and JavaScript modules embedded in the binary with `include_str!`, so
//! there is no build step, nothing to install and nothing built committed. They drive the native `/v1` API
//! like any other client; the only server-side additions are signing in and out (`session.rs`), which turn
//! an API key or an account's password into a session cookie that the `/v1` authentication accepts beside
//! bearer keys. Nothing here holds state: sessions are store records (nimbus-engine's `web_sessions`).

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::routes::Routes;

pub mod session;

/// The console's files, by the name the page asks for.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../ui/index.html")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../ui/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../ui/api.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_str!("../../ui/dom.js")),
    ("pages.js", "text/javascript; charset=utf-8", include_str!("../../ui/pages.js")),
    ("terminal.js", "text/javascript; charset=utf-8", include_str!("../../ui/terminal.js")),
    ("favicon.svg", "image/svg+xml", include_str!("../../ui/favicon.svg")),
];

/// Only this origin's scripts, styles and connections: an injected `<script>` or a page framing the
/// console does nothing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                                       base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Routes {
    Routes::new()
        .route("/", get(root))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route("/ui/{file}", get(|Path(file): Path<String>| async move { asset(&file) }))
        .route("/ui/session", post(session::sign_in).delete(session::sign_out))
}

/// Browsers asking for `/` land on the console; API clients keep the API's JSON 404.
async fn root(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let wants_html =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        Redirect::to("/ui/").into_response()
    } else {
        crate::error::unknown_route(uri).await.into_response()
    }
}

fn asset(file: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such file in the web console\n").into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files that change with the binary: always revalidated, so an upgrade is seen at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
