//! `nimbus events`: follows the server-sent event stream and prints one line per event.

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;

use crate::cli::client::{with_query, CliError};
use crate::cli::output::{cell, field};
use crate::cli::{Ctx, Format};

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Replay the events after this sequence number first (0: all of them); default: only new events.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<i64>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

pub async fn run(ctx: &Ctx, args: EventsArgs) -> Result<(), CliError> {
    let client = ctx.client()?;
    let query: Vec<(&str, String)> = args.after.map(|a| ("after", a.to_string())).into_iter().collect();
    let req = client.builder(Method::GET, &with_query("/v1/events", &query)).header("accept", "text/event-stream");
    let resp = client.send_raw(req, None).await?;
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut data = String::new();
    let mut seen = 0u64;
    loop {
        let chunk = tokio::select! {
            c = stream.next() => c,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(chunk) = chunk else {
            return Err(CliError::Network("the server closed the event stream".into()));
        };
        let chunk = chunk.map_err(|e| CliError::Network(format!("reading the event stream: {e}")))?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !data.is_empty() {
                    print_event(ctx, &data)?;
                    data.clear();
                    seen += 1;
                    if args.count.is_some_and(|c| seen >= c) {
                        return Ok(());
                    }
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
            // `id:`, `event:` and `:` keep-alive comments are all inside the data already, or carry nothing.
        }
    }
}

fn print_event(ctx: &Ctx, data: &str) -> Result<(), CliError> {
    let event: Value = serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string()));
    match ctx.out.format {
        // One JSON document per line, so that `nimbus events -o json | jq` works as the events arrive.
        Format::Json => println!("{}", serde_json::to_string(&event).unwrap_or_default()),
        Format::Yaml => {
            println!("---");
            ctx.out.data(&event)?;
        }
        Format::Table if ctx.out.quiet => println!("{}", cell(field(&event, "target_id"))),
        Format::Table => println!("{}", summarize(&event)),
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    Ok(())
}

fn summarize(e: &Value) -> String {
    let data = field(e, "data");
    let mut parts =
        vec![cell(field(e, "seq")), cell(field(e, "time")), cell(field(e, "kind")), cell(field(e, "target_id"))];
    for key in ["name", "kind", "state", "reason", "message"] {
        if let Some(v) = data.get(key).filter(|v| !v.is_null()) {
            parts.push(format!("{key}={}", cell(v)));
        }
    }
    parts.join(" ")
}
