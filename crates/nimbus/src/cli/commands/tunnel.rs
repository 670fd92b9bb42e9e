//! `nimbus instance ssh`, `port-forward` and `tunnel`: TCP to an instance's ports through the API.
//!
//! The server opens the connection from inside the instance network (Nimbus's network namespace) and carries
//! it over a websocket (`GET /v1/instances/{id}/tunnel/{port}`), so the caller needs an API key and nothing
//! else: no route to the instance network, no root. `tunnel` joins stdin/stdout to one such connection (it
//! is the ProxyCommand `ssh` runs), `port-forward` listens on the loopback and opens one per accepted client,
//! and `ssh` runs the system's `ssh` through `tunnel` as the template's default user.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::console::open_websocket;
use crate::cli::client::{encode, CliError, Client};

async fn pump<R, W>(client: &Client, id: &str, port: u16, mut reader: R, mut writer: W) -> Result<(), CliError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let socket = open_websocket(client, &format!("/v1/instances/{}/tunnel/{port}", encode(id))).await?;
    let (mut tx, mut rx) = socket.split();
    let outbound = async {
        let mut buf = vec![0u8; 16384];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    let inbound = async {
        while let Some(Ok(msg)) = rx.next().await {
            let bytes = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    };
    // The guest closing its side ends the tunnel; our side closing lets the guest answer what it still has.
    tokio::select! { _ = inbound => {}, _ = async { outbound.await; std::future::pending::<()>().await } => {} }
    Ok(())
}

/// stdin/stdout to `port` of the instance (what `ssh -o ProxyCommand=...` needs).
pub async fn stdio(client: &Client, id: &str, port: u16) -> Result<(), CliError> {
    pump(client, id, port, tokio::io::stdin(), tokio::io::stdout()).await
}

/// Publishes `remote` of the instance on 127.0.0.1:`local` until interrupted.
pub async fn forward(client: &Client, id: &str, local: u16, remote: u16) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", local))
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on 127.0.0.1:{local}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| CliError::Network(e.to_string()))?;
    eprintln!("forwarding {bound} -> instance {id} port {remote}; Ctrl-C to stop");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (conn, peer) = accepted.map_err(|e| CliError::Network(e.to_string()))?;
                let client = client.clone();
                let id = id.to_string();
                tokio::spawn(async move {
                    let (r, w) = conn.into_split();
                    if let Err(e) = pump(&client, &id, remote, r, w).await {
                        eprint!("{peer}: ");
                        e.report();
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Runs `ssh` to the instance through `nimbus instance tunnel`, and returns its exit status.
pub fn ssh(
    client: &Client,
    id: &str,
    name: &str,
    user: &str,
    identity: Option<&std::path::Path>,
    args: &[String],
) -> Result<std::process::ExitStatus, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::Usage(format!("cannot find this program: {e}")))?;
    let proxy = format!("{} instance tunnel {id} 22", shell_quote(&exe.display().to_string()));
    let known_hosts = dirs::config_dir().unwrap_or_else(std::env::temp_dir).join("nimbus").join("known_hosts");
    if let Some(dir) = known_hosts.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        // Instances get new host keys at their first boot: trust on first use, per instance id.
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-o")
        .arg(format!("HostKeyAlias=nimbus-{id}"));
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // Nobody to type a password or confirm a host key: fail instead of waiting for /dev/tty.
        cmd.args(["-o", "BatchMode=yes"]);
    }
    if let Some(key) = identity {
        cmd.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    cmd.arg(format!("{user}@{name}")).args(args);
    // The tunnel runs as a child of ssh: it finds the server and the key the way this command did.
    cmd.env("NIMBUS_URL", &client.url);
    if let Some(token) = client.token() {
        cmd.env("NIMBUS_TOKEN", token);
    }
    cmd.status().map_err(|e| CliError::Usage(format!("cannot run ssh (install openssh-client): {e}")))
}

fn shell_quote(s: &str) -> String {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
