//! `nimbus instance console --follow`: the live serial console over a websocket, detached with Ctrl-].

use std::io::{IsTerminal, Read, Write};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::client::{encode, CliError, Client};

/// Ctrl-] as telnet and virsh use it: a byte a serial console session has no other use for.
const DETACH: u8 = 0x1d;

/// With piped input, how long the console may stay silent after the input ended before detaching.
const PIPE_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Puts the terminal in raw mode so that keystrokes (Ctrl-C too) go to the guest; restores it on drop.
struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        if !std::io::stdin().is_terminal() {
            return RawMode { saved: None };
        }
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios the kernel filled in.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return RawMode { saved: None };
            }
            RawMode { saved: Some(saved) }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes read in `enter`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

/// A websocket to `path` of the API, authenticated like every other call.
pub async fn open_websocket(client: &Client, path: &str) -> Result<crate::websocket::Socket, CliError> {
    let ws_url = format!("{}{path}", client.url).replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| CliError::Usage(format!("invalid websocket URL {ws_url}: {e}")))?;
    if let Some(token) = client.token() {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| CliError::Usage("the token is not a valid HTTP header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    if client.verbose() {
        eprintln!("> GET {ws_url} (websocket)");
    }
    let socket = crate::websocket::connect(request, client.ca_file()).await.map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let status =
                reqwest::StatusCode::from_u16(resp.status().as_u16()).unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_string();
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let err = &parsed["error"];
            CliError::Api {
                status,
                code: err["code"].as_str().unwrap_or("error").to_string(),
                message: err["message"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("websocket refused: {status}")),
                request_id: err["request_id"].as_str().map(String::from),
            }
        }
        other => CliError::Network(format!("cannot open the websocket at {ws_url}: {other}")),
    })?;
    Ok(socket)
}

pub async fn attach(client: &Client, id: &str) -> Result<(), CliError> {
    let socket = open_websocket(client, &format!("/v1/instances/{}/console/stream", encode(id))).await?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("attached to {id}; detach with Ctrl-]\r");
    }
    let (mut tx, mut rx) = socket.split();

    // Stdin is read on a plain thread: a blocking read cannot be cancelled, and the process exits after detaching.
    let (keys_tx, mut keys_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let raw = RawMode::enter();
    let mut stdin_open = true;
    let result = loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => write_out(&b),
                Some(Ok(Message::Text(t))) => write_out(t.as_bytes()),
                Some(Ok(Message::Close(_))) | None => break Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(CliError::Network(format!("console connection lost: {e}"))),
            },
            keys = keys_rx.recv(), if stdin_open => match keys {
                Some(bytes) => {
                    if let Some(pos) = bytes.iter().position(|b| *b == DETACH) {
                        if pos > 0 {
                            let _ = tx.send(Message::Binary(bytes[..pos].to_vec().into())).await;
                        }
                        break Ok(());
                    }
                    if tx.send(Message::Binary(bytes.into())).await.is_err() {
                        break Err(CliError::Network("console connection lost".into()));
                    }
                }
                // Input ended (a pipe): show what the guest answers, then detach once it has been quiet a while.
                None => stdin_open = false,
            },
            _ = tokio::time::sleep(PIPE_IDLE), if !stdin_open => break Ok(()),
            _ = tokio::signal::ctrl_c(), if !interactive => break Ok(()),
        }
    };
    drop(raw);
    let _ = tx.send(Message::Close(None)).await;
    if interactive {
        eprintln!("\ndetached from {id}");
    }
    result
}

fn write_out(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}
