//! One module per resource; this one holds what they share: argument parsing helpers and the operation flow.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::client::{CliError, Client, Reply};
use super::output::str_field;
use super::{wait, Ctx};

pub mod access;
pub mod catalog;
pub mod config;
pub mod console;
pub mod events;
pub mod host;
pub mod instance;
pub mod operation;
pub mod snapshot;
pub mod tunnel;
pub mod volume;

/// `k=v` as given to `--label`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

pub fn labels_map(labels: &[(String, String)]) -> BTreeMap<String, String> {
    labels.iter().cloned().collect()
}

/// A canonical UUID, which is looked up directly instead of by name.
pub fn looks_like_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// Finds the one item of `items` whose id or name is `wanted`; several with that name is an error naming them.
pub fn pick_by_name(kind: &str, wanted: &str, items: &[Value], id_field: &str) -> Result<Value, CliError> {
    if let Some(hit) = items.iter().find(|i| str_field(i, id_field) == wanted) {
        return Ok(hit.clone());
    }
    let named: Vec<&Value> = items.iter().filter(|i| str_field(i, "name") == wanted).collect();
    match named.as_slice() {
        [] => Err(CliError::NotFound(format!("no {kind} with id or name {wanted:?}"))),
        [one] => Ok((*one).clone()),
        many => Err(CliError::Usage(format!(
            "{} {kind}s are named {wanted:?}; use an id: {}",
            many.len(),
            many.iter().map(|i| str_field(i, id_field)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Flags shared by every command that starts an operation.
#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// Print the operation id and return at once instead of waiting for it to end.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (the operation keeps running).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// Either prints the operation at once (`--no-wait`) or waits for it; `Some` is the finished operation.
pub async fn follow_operation(
    ctx: &Ctx,
    client: &Client,
    reply: Reply,
    args: &WaitArgs,
) -> Result<Option<Value>, CliError> {
    let op = reply.body;
    if op.get("kind").is_none() || op.get("state").is_none() {
        return Err(CliError::Other(format!("expected an operation from the server, got {op}")));
    }
    if args.no_wait {
        if ctx.out.structured() {
            ctx.out.data(&op)?;
        } else {
            println!("{}", str_field(&op, "id"));
            if !ctx.out.quiet {
                eprintln!("follow it with: nimbus operation wait {}", str_field(&op, "id"));
            }
        }
        return Ok(None);
    }
    let done = wait::wait(client, &ctx.out, op, args.timeout.map(Duration::from_secs)).await?;
    Ok(Some(done))
}
