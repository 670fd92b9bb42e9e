//! A minimal QMP client: newline-delimited JSON over the instance's unix socket.
//!
//! QEMU serves one QMP client at a time on a socket (others wait in the backlog), so the driver opens a
//! connection per action and closes it at once instead of keeping one open. Asynchronous events that
//! arrive between replies are kept in `events` for callers that care.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::{timeout, Instant};

/// How long one command may take. Every command the driver sends completes in milliseconds; a stuck
/// QEMU must not stall an operation worker forever.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct QmpError(pub String);

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities-negotiation mode. Retries until `wait` runs out,
    /// because right after spawn the socket may not exist yet.
    pub async fn connect(path: &Path, wait: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(QmpError(format!("QMP connect {}: {e}", path.display())));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Qmp { reader: BufReader::new(r), writer: w, next_id: 1, events: Vec::new() };
        let greeting = timeout(COMMAND_TIMEOUT, qmp.read_message())
            .await
            .map_err(|_| QmpError("no QMP greeting (is another client connected?)".into()))??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError(format!("unexpected QMP greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).await.map_err(|e| QmpError(format!("QMP read: {e}")))?;
            if n == 0 {
                return Err(QmpError("QMP connection closed".into()));
            }
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(line.trim()).map_err(|e| QmpError(format!("QMP: bad JSON {line:?}: {e}")));
        }
    }

    /// Runs one command and returns its `return` value; a QMP `error` becomes `Err`.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON of a Value");
        bytes.push(b'\n');
        let fut = async {
            self.writer.write_all(&bytes).await.map_err(|e| QmpError(format!("QMP write: {e}")))?;
            loop {
                let reply = self.read_message().await?;
                if reply.get("event").is_some() {
                    self.events.push(reply);
                    continue;
                }
                if reply.get("id").and_then(Value::as_u64) != Some(id) {
                    continue;
                }
                if let Some(err) = reply.get("error") {
                    let desc = err.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
                    return Err(QmpError(format!("QMP {command}: {desc}")));
                }
                return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
            }
        };
        timeout(COMMAND_TIMEOUT, fut).await.map_err(|_| QmpError(format!("QMP {command}: no reply")))?
    }
}

/// Connects and runs a single command: the common case.
pub async fn command(socket: &Path, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
    let mut qmp = Qmp::connect(socket, Duration::from_secs(2)).await?;
    qmp.execute(command, arguments).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A fake QEMU: greeting, then an event before each reply, to check that events are set aside.
    #[tokio::test]
    async fn executes_commands_and_keeps_events_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").await.unwrap();
            let mut buf = vec![0u8; 4096];
            for _ in 0..2 {
                let n = s.read(&mut buf).await.unwrap();
                let req: Value = serde_json::from_slice(&buf[..n]).unwrap();
                let id = req["id"].clone();
                let reply = if req["execute"] == "query-status" {
                    json!({"return": {"status": "running"}, "id": id})
                } else {
                    json!({"return": {}, "id": id})
                };
                s.write_all(b"{\"event\": \"RESUME\"}\r\n").await.unwrap();
                s.write_all(format!("{reply}\r\n").as_bytes()).await.unwrap();
            }
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(1)).await.unwrap();
        let status = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "running");
        assert_eq!(qmp.events.len(), 2);
        server.await.unwrap();
    }
}
