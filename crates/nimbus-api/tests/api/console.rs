//! The interactive console over a real socket: a console ticket opens one instance's websocket without
//! any header, once, until it expires; forged, spent, expired and other instances' tickets are refused in
//! the native error shape and nothing is opened.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use nimbus_driver::SimConfig;
use nimbus_engine::EngineConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::common::*;

/// Serves the cloud's router on a loopback port, as `nimbus server` does.
async fn serve(c: &Cloud) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = c.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `POST /v1/instances/{id}/console/ticket` as a client of `addr` sends it (its `Host` names the server).
async fn ticket(c: &Cloud, addr: SocketAddr, token: &str, id: &str) -> Reply {
    let req = Request::post(format!("/v1/instances/{id}/console/ticket"))
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    c.send(req).await
}

async fn url_of(c: &Cloud, addr: SocketAddr, id: &str) -> String {
    let r = ticket(c, addr, ADMIN, id).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["url"].as_str().unwrap().to_string()
}

/// Opens `url` with no header but the websocket handshake's; on refusal, the status and JSON body.
async fn open(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    (StatusCode, Value),
> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, response)) => {
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            Ok(socket)
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let body = response.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(e) => panic!("connecting to {url}: {e}"),
    }
}

async fn refused(url: &str) -> (StatusCode, Value) {
    match open(url).await {
        Ok(_) => panic!("{url} opened the console"),
        Err(refusal) => refusal,
    }
}

#[tokio::test]
async fn a_console_ticket_opens_the_instance_console_without_any_header_once() {
    let c = Cloud::new().await;
    let addr = serve(&c).await;
    let id = c.instance(ADMIN, "con-1", json!({})).await;

    let r = ticket(&c, addr, ADMIN, &id).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let url = r.body["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("ws://{addr}/v1/instances/{id}/console/stream?ticket={}", r.body["ticket"].as_str().unwrap())
    );
    let expires = time::OffsetDateTime::parse(
        r.body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::seconds(50) && left <= time::Duration::seconds(60), "{left}");

    let mut socket = open(url).await.expect("the ticket opens the console");
    socket.send(Message::Text("echo hi\n".into())).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("echo hi") {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("console output");
        match frame.unwrap().unwrap() {
            Message::Binary(b) => seen.extend_from_slice(&b),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(String::from_utf8_lossy(&seen).contains("READY"), "the serial log comes first: {seen:?}");

    // Single use: the same URL does not open a second connection, while the first stays open.
    let (status, body) = refused(url).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")), "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
    socket.send(Message::Text("still here\n".into())).await.unwrap();
    socket.close(None).await.unwrap();

    // The bearer key still works as before.
    let stream = format!("ws://{addr}/v1/instances/{id}/console/stream");
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(stream.as_str()).unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.expect("a bearer key opens the console");
    let (status, _) = refused(&stream).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "neither a key nor a ticket");
}

#[tokio::test]
async fn forged_and_other_instances_tickets_are_refused() {
    let c = Cloud::new().await;
    let addr = serve(&c).await;
    let a = c.instance(ADMIN, "con-a", json!({})).await;
    let b = c.instance(ADMIN, "con-b", json!({})).await;
    let url_a = url_of(&c, addr, &a).await;
    let token_a = url_a.split_once("ticket=").unwrap().1.to_string();
    let (ticket_id, secret) = token_a.split_once('.').unwrap();

    let stream_of = |id: &str, token: &str| format!("ws://{addr}/v1/instances/{id}/console/stream?ticket={token}");
    let forged_secret = format!("{ticket_id}.{}", "A".repeat(secret.len()));
    let forged_id = format!("{}.{secret}", uuid::Uuid::new_v4().simple());
    for token in ["", "nonsense", forged_secret.as_str(), forged_id.as_str(), ticket_id] {
        let (status, body) = refused(&stream_of(&a, token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    }

    // A's ticket does not open B, and is not spent by trying.
    let (status, body) = refused(&stream_of(&b, &token_a)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
    open(&url_a).await.expect("A's ticket still opens A");

    // Another project sees no instance to mint a ticket for; a read-only key may not mint one.
    let other_project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let outsider = c.key("admin", Some(other_project.body["id"].as_str().unwrap())).await;
    assert_eq!(ticket(&c, addr, &outsider, &a).await.status, StatusCode::NOT_FOUND);
    let reader = c.key("read-only", None).await;
    assert_eq!(ticket(&c, addr, &reader, &a).await.status, StatusCode::FORBIDDEN);

    // A stopped instance has no console to ticket.
    c.act(ADMIN, &b, "stop", None).await;
    let r = ticket(&c, addr, ADMIN, &b).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
}

#[tokio::test]
async fn an_expired_ticket_or_one_whose_key_was_deleted_is_refused() {
    let config = EngineConfig { console_ticket_lifetime: Duration::from_millis(300), ..Default::default() };
    let c = Cloud::with(SimConfig::default(), config).await;
    let addr = serve(&c).await;
    let id = c.instance(ADMIN, "con-x", json!({})).await;

    let url = url_of(&c, addr, &id).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = refused(&url).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");

    let member = c.post("/v1/api-keys", ADMIN, json!({"name": "member", "role": "member"})).await;
    let r = ticket(&c, addr, member.body["secret"].as_str().unwrap(), &id).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key_id = member.body["key_id"].as_str().unwrap();
    let deleted = c.call(axum::http::Method::DELETE, &format!("/v1/api-keys/{key_id}"), ADMIN, None).await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    let (status, body) = refused(r.body["url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

/// A member key for these tests: its id (to delete it) and its secret.
async fn member_key(c: &Cloud) -> (String, String) {
    let r = c.post("/v1/api-keys", ADMIN, json!({"name": "soon-revoked", "role": "member"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (r.body["key_id"].as_str().unwrap().to_string(), r.body["secret"].as_str().unwrap().to_string())
}

async fn revoke(c: &Cloud, key_id: &str) {
    let r = c.call(axum::http::Method::DELETE, &format!("/v1/api-keys/{key_id}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
}

/// An open event stream does not outlive its key: deleting the key ends it at once.
#[tokio::test]
async fn an_event_stream_ends_when_its_key_is_deleted() {
    let c = std::sync::Arc::new(Cloud::new().await);
    let (key_id, secret) = member_key(&c).await;
    let stream = {
        let c = c.clone();
        tokio::spawn(async move { c.get("/v1/events", &secret).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!stream.is_finished(), "the stream is open while its key stands");
    revoke(&c, &key_id).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), stream).await;
    let reply = ended.expect("the stream ended once its key was deleted").unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

/// An open console websocket does not outlive its key either: whether opened with the key or with a
/// ticket the key minted, it closes when the key is deleted.
#[tokio::test]
async fn a_console_closes_when_its_key_is_deleted() {
    let c = Cloud::new().await;
    let addr = serve(&c).await;
    let id = c.instance(ADMIN, "con-revoked", json!({})).await;
    let (key_id, secret) = member_key(&c).await;
    let r = ticket(&c, addr, &secret, &id).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mut socket = open(r.body["url"].as_str().unwrap()).await.expect("the ticket opens the console");
    socket.send(Message::Binary(b"still here\n".to_vec().into())).await.unwrap();
    revoke(&c, &key_id).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the console stayed open after its key was deleted");
}
