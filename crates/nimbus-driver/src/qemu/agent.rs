//! A minimal client of the QEMU guest agent (qemu-guest-agent in the guest, on a virtio-serial port that
//! QEMU exposes as the instance's `qga.sock`).
//!
//! The agent's channel is a byte stream without framing guarantees: a reply to an earlier, abandoned
//! request may still be in flight. Every connection therefore begins with `guest-sync-delimited` and a
//! random id, and skips everything up to the 0xFF byte the agent sends before that reply.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::GuestInterface;

pub struct Agent {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Agent {
    /// Connects and synchronizes; fails within `wait` when no agent answers (none installed, or not up).
    pub async fn connect(socket: &Path, wait: Duration) -> Result<Agent, String> {
        let stream = UnixStream::connect(socket).await.map_err(|e| format!("guest agent socket: {e}"))?;
        let (r, w) = stream.into_split();
        let mut agent = Agent { reader: BufReader::new(r), writer: w };
        let id: u32 = rand_id();
        let sync = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
        timeout(wait, async {
            agent.send(&sync).await?;
            // Skip to the delimiter, then read replies until ours.
            loop {
                let b = agent.reader.read_u8().await.map_err(|e| format!("guest agent: {e}"))?;
                if b == 0xff {
                    break;
                }
            }
            loop {
                let reply = agent.read().await?;
                if reply.get("return").and_then(Value::as_u64) == Some(u64::from(id)) {
                    return Ok::<(), String>(());
                }
            }
        })
        .await
        .map_err(|_| "the guest agent does not answer".to_string())??;
        Ok(agent)
    }

    async fn send(&mut self, msg: &Value) -> Result<(), String> {
        let mut bytes = serde_json::to_vec(msg).expect("JSON");
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await.map_err(|e| format!("guest agent: {e}"))
    }

    async fn read(&mut self) -> Result<Value, String> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.map_err(|e| format!("guest agent: {e}"))? == 0 {
                return Err("guest agent: connection closed".into());
            }
            let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{ff}');
            if !line.is_empty() {
                return serde_json::from_str(line).map_err(|e| format!("guest agent: bad JSON {line:?}: {e}"));
            }
        }
    }

    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({"execute": command});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        self.send(&msg).await?;
        let reply = timeout(Duration::from_secs(10), self.read())
            .await
            .map_err(|_| format!("guest agent: no reply to {command}"))??;
        if let Some(err) = reply.get("error") {
            return Err(format!("guest agent {command}: {}", err["desc"].as_str().unwrap_or("error")));
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Asks the guest's OS to power off (it answers nothing when it complies).
    pub async fn shutdown(&mut self) -> Result<(), String> {
        self.send(&json!({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}})).await
    }

    pub async fn interfaces(&mut self) -> Result<Vec<GuestInterface>, String> {
        let v = self.execute("guest-network-get-interfaces", None).await?;
        Ok(parse_interfaces(&v))
    }
}

fn rand_id() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id()
}

fn parse_interfaces(v: &Value) -> Vec<GuestInterface> {
    v.as_array()
        .map(|ifaces| {
            ifaces
                .iter()
                .map(|i| GuestInterface {
                    name: i["name"].as_str().unwrap_or_default().to_string(),
                    mac_address: i["hardware-address"].as_str().map(String::from),
                    addresses: i["ip-addresses"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|ip| {
                                    Some(format!("{}/{}", ip["ip-address"].as_str()?, ip["prefix"].as_u64()?))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake agent that left a stale reply in the channel: the sync skips it.
    #[tokio::test]
    async fn syncs_past_stale_replies_and_reads_interfaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            let id = serde_json::from_str::<Value>(&line).unwrap()["arguments"]["id"].clone();
            w.write_all(b"{\"return\": {}}\n\xff").await.unwrap();
            w.write_all(format!("{{\"return\": {id}}}\n").as_bytes()).await.unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            let reply = json!({"return": [{"name": "eth0", "hardware-address": "52:54:00:00:00:01",
                "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.213.0.2", "prefix": 24}]}]});
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        });
        let mut agent = Agent::connect(&path, Duration::from_secs(2)).await.unwrap();
        let ifaces = agent.interfaces().await.unwrap();
        assert_eq!(ifaces[0].addresses, vec!["10.213.0.2/24".to_string()]);
        server.await.unwrap();
    }
}
