//! Carries bytes both ways between a websocket and a byte stream until either end closes: a user's
//! console websocket and an instance's serial console, or an agent's websocket and the stream a user's
//! request waits for.

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub async fn relay<S: AsyncRead + AsyncWrite + Send>(socket: WebSocket, stream: S) {
    relay_until(socket, stream, std::future::pending()).await
}

/// The same, ended early when `stop` resolves (the user's key was revoked).
pub async fn relay_until<S: AsyncRead + AsyncWrite + Send>(
    socket: WebSocket,
    stream: S,
    stop: impl std::future::Future<Output = ()>,
) {
    let (mut to_peer, mut from_peer) = socket.split();
    let (mut read, mut write) = tokio::io::split(stream);
    let outbound = async {
        let mut buf = vec![0u8; 4096];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            if to_peer.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                break;
            }
        }
    };
    let inbound = async {
        while let Some(Ok(msg)) = from_peer.next().await {
            let bytes = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    tokio::select! { _ = outbound => {}, _ = inbound => {}, _ = stop => {} }
}
