//! `nimbus operation ...`: list, show and wait for operations.

use std::time::Duration;

use clap::Subcommand;

use crate::cli::client::{encode, CliError};
use crate::cli::output::Column;
use crate::cli::{wait, Ctx};

const COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("KIND", "kind"),
    ("STATE", "state"),
    ("TARGET", "target.id"),
    ("REASON", "reason"),
    ("CREATED", "created_at"),
];

pub const SHOW_FIELDS: &[Column] = &[
    ("id", "id"),
    ("kind", "kind"),
    ("state", "state"),
    ("reason", "reason"),
    ("message", "message"),
    ("target", "target.type"),
    ("target_id", "target.id"),
    ("result", "result"),
    ("attempts", "attempts"),
    ("key_id", "key_id"),
    ("request_id", "request_id"),
    ("created_at", "created_at"),
    ("updated_at", "updated_at"),
];

#[derive(Subcommand, Debug)]
pub enum OperationCmd {
    /// List operations, newest first.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus operation list --instance web")]
    List {
        /// Only operations on this instance (id or name).
        #[arg(long)]
        instance: Option<String>,
        /// At most this many operations.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one operation.
    #[command(after_help = "Example:\n  nimbus operation show 0190c5e2-...")]
    Show { id: String },
    /// Wait until an operation ends; exits 4 if it failed.
    #[command(after_help = "Example:\n  nimbus operation wait $(nimbus instance stop web --no-wait)")]
    Wait {
        id: String,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
}

pub async fn run(ctx: &Ctx, cmd: OperationCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        OperationCmd::List { instance, limit } => {
            let mut query = vec![("limit", limit.min(500).to_string())];
            if let Some(i) = instance {
                query.push(("target", super::instance::resolve(&client, &i).await?));
            }
            let items = client.list_all("/v1/operations", &query, Some(limit)).await?;
            ctx.out.list(&items, COLUMNS, "id")
        }
        OperationCmd::Show { id } => {
            let op = client.get(&format!("/v1/operations/{}", encode(&id))).await?;
            ctx.out.object(&op, SHOW_FIELDS, "id")
        }
        OperationCmd::Wait { id, timeout } => {
            let op = client.get(&format!("/v1/operations/{}", encode(&id))).await?;
            let done = wait::wait(&client, &ctx.out, op, timeout.map(Duration::from_secs)).await?;
            ctx.out.object(&done, SHOW_FIELDS, "id")
        }
    }
}
