//! Talking to the native API: requests, the `--verbose` trace, and turning failures into one line and an exit code.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::config::Connection;

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const AUTH: u8 = 5;
    pub const SERVER: u8 = 6;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug)]
pub enum CliError {
    /// The command line (or what it names) cannot work as given.
    Usage(String),
    /// Something named on the command line does not exist (found out by the client itself).
    NotFound(String),
    /// The server answered with its error shape (or at least an error status).
    Api {
        status: StatusCode,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// The server could not be reached or answered something that is not the native API.
    Network(String),
    /// An operation ended in failure, timeout or cancelled.
    OperationFailed(String),
    /// Ctrl-C while waiting; the message says how to pick it up again.
    Interrupted(String),
    /// A program run on the user's behalf (`ssh`) ended with this status; it said why itself.
    Exit(u8),
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::OperationFailed(_) => exit::REFUSED,
            CliError::Network(_) => exit::SERVER,
            CliError::Interrupted(_) => exit::INTERRUPTED,
            CliError::Other(_) => exit::OTHER,
            CliError::Exit(code) => *code,
            CliError::Api { status, code, .. } => match *status {
                StatusCode::BAD_REQUEST => exit::USAGE,
                StatusCode::NOT_FOUND => exit::NOT_FOUND,
                // A quota is a refusal of this request, not a problem with who is asking.
                StatusCode::FORBIDDEN if code == "quota_exceeded" => exit::REFUSED,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => exit::AUTH,
                StatusCode::CONFLICT
                | StatusCode::PRECONDITION_FAILED
                | StatusCode::UNPROCESSABLE_ENTITY
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::PAYLOAD_TOO_LARGE => exit::REFUSED,
                s if s.is_server_error() => exit::SERVER,
                _ => exit::OTHER,
            },
        }
    }

    pub fn report(&self) {
        match self {
            CliError::Api { status, code, message, request_id } => {
                let mut line = format!("error: {message} ({code}, HTTP {}", status.as_u16());
                if let Some(id) = request_id {
                    line.push_str(&format!(", request id {id}"));
                }
                line.push(')');
                if *status == StatusCode::UNAUTHORIZED {
                    line.push_str("; check NIMBUS_TOKEN, --token or the profile (`nimbus config list`)");
                }
                eprintln!("{line}");
            }
            CliError::Interrupted(m) => eprintln!("{m}"),
            CliError::Exit(_) => {}
            CliError::Usage(m)
            | CliError::NotFound(m)
            | CliError::Network(m)
            | CliError::OperationFailed(m)
            | CliError::Other(m) => eprintln!("error: {m}"),
        }
    }
}

/// A response that arrived with a success status.
pub struct Reply {
    pub body: Value,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub url: String,
    token: Option<String>,
    verbose: bool,
    /// The CA the HTTP client trusts, for the websockets too (`crate::websocket`).
    ca_file: Option<std::path::PathBuf>,
}

impl Client {
    pub fn new(conn: Connection, verbose: bool, ca_file: Option<&std::path::Path>) -> Result<Client, CliError> {
        if !conn.url.starts_with("http://") && !conn.url.starts_with("https://") {
            return Err(CliError::Usage(format!("the API URL {:?} must start with http:// or https://", conn.url)));
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("nimbus-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| CliError::Usage(format!("--ca-file {}: {e}", path.display())))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| CliError::Usage(format!("--ca-file {}: not a PEM certificate: {e}", path.display())))?;
            builder = builder.add_root_certificate(ca);
        }
        let http = builder.build().map_err(|e| CliError::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, url: conn.url, token: conn.token, verbose, ca_file: ca_file.map(Into::into) })
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn verbose(&self) -> bool {
        self.verbose
    }

    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    pub fn builder(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// Sends a request and hands back the raw response once its status is a success.
    pub async fn send_raw(
        &self,
        req: reqwest::RequestBuilder,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, CliError> {
        let req = match body {
            Some(b) => req.json(b),
            None => req,
        };
        let req = req.build().map_err(|e| CliError::Usage(format!("invalid request: {e}")))?;
        if self.verbose {
            eprintln!("> {} {}", req.method(), req.url());
            for (name, value) in req.headers() {
                let shown =
                    if name == reqwest::header::AUTHORIZATION { "Bearer ***" } else { value.to_str().unwrap_or("?") };
                eprintln!("> {name}: {shown}");
            }
            if let Some(b) = body {
                eprintln!("> {b}");
            }
        }
        let method = req.method().clone();
        let url = req.url().clone();
        let resp = self.http.execute(req).await.map_err(|e| network_error(&method, url.as_str(), &e))?;
        if self.verbose {
            eprintln!("< {}", resp.status());
            for (name, value) in resp.headers() {
                eprintln!("< {name}: {}", value.to_str().unwrap_or("?"));
            }
        }
        if resp.status().is_success() || resp.status().is_informational() {
            return Ok(resp);
        }
        let status = resp.status();
        let header_request_id = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(String::from);
        let text = resp.text().await.unwrap_or_default();
        if self.verbose {
            eprintln!("< {text}");
        }
        Err(api_error(status, &text, header_request_id))
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply, CliError> {
        let resp = self.send_raw(self.builder(method, path), body).await?;
        let text = resp.text().await.map_err(|e| CliError::Network(format!("reading the response: {e}")))?;
        if self.verbose && !text.is_empty() {
            eprintln!("< {text}");
        }
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                CliError::Network(format!("the server at {} answered something that is not JSON: {e}", self.url))
            })?
        };
        Ok(Reply { body })
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        Ok(self.send(Method::GET, path, None).await?.body)
    }

    pub async fn get_text(&self, path: &str) -> Result<String, CliError> {
        let resp = self.send_raw(self.builder(Method::GET, path), None).await?;
        resp.text().await.map_err(|e| CliError::Network(format!("reading the response: {e}")))
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Reply, CliError> {
        self.send(Method::POST, path, body).await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply, CliError> {
        self.send(Method::DELETE, path, None).await
    }

    /// Every page of a list endpoint, stopping once `limit` items are in hand.
    pub async fn list_all(
        &self,
        path: &str,
        query: &[(&str, String)],
        limit: Option<usize>,
    ) -> Result<Vec<Value>, CliError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = query.to_vec();
            if let Some(t) = &token {
                q.push(("page_token", t.clone()));
            }
            let page = self.get(&with_query(path, &q)).await?;
            if let Some(list) = page.get("items").and_then(Value::as_array) {
                items.extend(list.iter().cloned());
            }
            if limit.is_some_and(|l| items.len() >= l) {
                items.truncate(limit.unwrap_or(usize::MAX));
                break;
            }
            token = page.get("next_page_token").and_then(Value::as_str).filter(|t| !t.is_empty()).map(String::from);
            if token.is_none() {
                break;
            }
        }
        Ok(items)
    }
}

pub fn with_query(path: &str, query: &[(&str, String)]) -> String {
    if query.is_empty() {
        return path.to_string();
    }
    let encoded: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    format!("{path}?{}", encoded.join("&"))
}

/// Percent-encodes one path segment or query value (RFC 3986 unreserved characters pass through).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn api_error(status: StatusCode, text: &str, header_request_id: Option<String>) -> CliError {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| err.and_then(|e| e.get(name)).and_then(Value::as_str).map(String::from);
    let code = field("code").unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_lowercase());
    let message = field("message").unwrap_or_else(|| {
        let t = text.trim();
        if t.is_empty() {
            format!("the server answered {status}")
        } else {
            t.chars().take(300).collect()
        }
    });
    let request_id = field("request_id").or(header_request_id).filter(|s| !s.is_empty());
    CliError::Api { status, code, message, request_id }
}

fn network_error(method: &Method, url: &str, e: &reqwest::Error) -> CliError {
    // reqwest's own message repeats the URL; the chain of sources below it says what actually went wrong.
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let cause = if causes.is_empty() { e.to_string() } else { causes.join(": ") };
    CliError::Network(format!("{method} {url} failed: {cause} (is the server running? set NIMBUS_URL or --url)"))
}
