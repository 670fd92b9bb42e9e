//! Waiting for an operation to end: long polls with `?wait=`, a spinner on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::{encode, CliError, Client};
use super::output::{str_field, Output};

/// Seconds each long poll asks the server to hold; short enough that a lost connection is noticed soon.
const POLL_SECS: u64 = 20;
/// A spinner polls more often: the server answers a long poll only at the end, and people like to see
/// `pending` turn into `running`.
const SPINNER_POLL_SECS: u64 = 2;

pub fn is_final(state: &str) -> bool {
    matches!(state, "success" | "failure" | "timeout" | "cancelled")
}

/// Turns an operation that ended badly into the error the command exits with.
pub fn check(op: &Value) -> Result<(), CliError> {
    let state = str_field(op, "state");
    if state == "success" || !is_final(&state) {
        return Ok(());
    }
    let mut line = format!("operation {} ({}) ended in {state}", str_field(op, "id"), str_field(op, "kind"));
    if let Some(reason) = op.get("reason").and_then(Value::as_str) {
        line.push_str(&format!(" [{reason}]"));
    }
    if let Some(message) = op.get("message").and_then(Value::as_str) {
        line.push_str(&format!(": {message}"));
    }
    Err(CliError::OperationFailed(line))
}

enum Progress {
    Spinner(ProgressBar),
    Lines { last: String },
    Silent,
}

impl Progress {
    fn new(out: &Output, op: &Value) -> Progress {
        if out.quiet {
            return Progress::Silent;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(describe(op));
            bar.enable_steady_tick(Duration::from_millis(100));
            Progress::Spinner(bar)
        } else {
            Progress::Lines { last: String::new() }
        }
    }

    fn update(&mut self, op: &Value) {
        match self {
            Progress::Spinner(bar) => bar.set_message(describe(op)),
            Progress::Lines { last } => {
                let line = describe(op);
                if *last != line {
                    eprintln!("{line}");
                    *last = line;
                }
            }
            Progress::Silent => {}
        }
    }

    fn finish(&self) {
        if let Progress::Spinner(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn describe(op: &Value) -> String {
    let mut line = format!(
        "{} {} {}: {}",
        str_field(op, "kind"),
        str_field(op, "target.type"),
        str_field(op, "target.id"),
        str_field(op, "state")
    );
    let total = op["progress"]["steps_total"].as_u64().unwrap_or(0);
    if total > 0 && str_field(op, "state") == "running" {
        let done = op["progress"]["steps_done"].as_u64().unwrap_or(0);
        line.push_str(&format!(" (step {}/{total}", (done + 1).min(total)));
        if let Some(step) = op["progress"]["step"].as_str() {
            line.push_str(&format!(": {step}"));
        }
        line.push(')');
    }
    line
}

/// Waits until the operation ends (or `timeout` passes) and returns its last state; Ctrl-C leaves it running.
pub async fn wait(client: &Client, out: &Output, op: Value, timeout: Option<Duration>) -> Result<Value, CliError> {
    let id = str_field(&op, "id");
    if is_final(&str_field(&op, "state")) {
        check(&op)?;
        return Ok(op);
    }
    let mut progress = Progress::new(out, &op);
    progress.update(&op);
    let started = Instant::now();
    let mut current = op;
    let result = loop {
        if is_final(&str_field(&current, "state")) {
            break Ok(current);
        }
        let mut secs = if matches!(progress, Progress::Spinner(_)) { SPINNER_POLL_SECS } else { POLL_SECS };
        if let Some(t) = timeout {
            let left = t.saturating_sub(started.elapsed());
            if left.is_zero() {
                progress.finish();
                return Err(CliError::OperationFailed(format!(
                    "operation {id} is still {} after {}s; follow it with: nimbus operation wait {id}",
                    str_field(&current, "state"),
                    t.as_secs()
                )));
            }
            secs = secs.min(left.as_secs().max(1));
        }
        let path = format!("/v1/operations/{}?wait={secs}", encode(&id));
        tokio::select! {
            polled = client.get(&path) => match polled {
                Ok(next) => {
                    progress.update(&next);
                    current = next;
                }
                Err(e) => break Err(e),
            },
            _ = tokio::signal::ctrl_c() => {
                progress.finish();
                return Err(CliError::Interrupted(format!(
                    "stopped waiting; operation {id} keeps running on the server. Follow it with: nimbus operation wait {id}"
                )));
            }
        }
    };
    progress.finish();
    let op = result?;
    check(&op)?;
    Ok(op)
}
