//! `nimbus snapshot ...`: the snapshots of the project's instances.

use clap::Subcommand;

use super::{follow_operation, looks_like_uuid, pick_by_name, WaitArgs};
use crate::cli::client::{encode, CliError, Client};
use crate::cli::output::{str_field, Column};
use crate::cli::Ctx;

const COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("INSTANCE", "instance_id"),
    ("STATE", "state"),
    ("SIZE_GB", "size_gb"),
    ("CREATED", "created_at"),
];

const SHOW_FIELDS: &[Column] = &[
    ("id", "id"),
    ("name", "name"),
    ("instance_id", "instance_id"),
    ("state", "state"),
    ("size_gb", "size_gb"),
    ("created_at", "created_at"),
];

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// List snapshots.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus snapshot list --instance web")]
    List {
        /// Only the snapshots of this instance (id or name).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Show one snapshot.
    #[command(after_help = "Example:\n  nimbus snapshot show before-upgrade")]
    Show { snapshot: String },
    /// Delete a snapshot.
    #[command(visible_alias = "rm", after_help = "Example:\n  nimbus snapshot delete before-upgrade")]
    Delete {
        snapshot: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

async fn list(client: &Client, instance_id: Option<&str>) -> Result<Vec<serde_json::Value>, CliError> {
    let query: Vec<(&str, String)> = instance_id.map(|i| ("instance_id", i.to_string())).into_iter().collect();
    client.list_all("/v1/snapshots", &query, None).await
}

/// The id of a snapshot given by id or by name (names are looked up among `instance_id`'s when given).
pub async fn resolve(client: &Client, wanted: &str, instance_id: Option<&str>) -> Result<String, CliError> {
    if looks_like_uuid(wanted) {
        return Ok(wanted.to_string());
    }
    let items = list(client, instance_id).await?;
    Ok(str_field(&pick_by_name("snapshot", wanted, &items, "id")?, "id"))
}

pub async fn show(ctx: &Ctx, client: &Client, id: &str) -> Result<(), CliError> {
    let s = client.get(&format!("/v1/snapshots/{}", encode(id))).await?;
    ctx.out.object(&s, SHOW_FIELDS, "id")
}

pub async fn run(ctx: &Ctx, cmd: SnapshotCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        SnapshotCmd::List { instance } => {
            let instance_id = match instance {
                Some(i) => Some(super::instance::resolve(&client, &i).await?),
                None => None,
            };
            let items = list(&client, instance_id.as_deref()).await?;
            ctx.out.list(&items, COLUMNS, "id")
        }
        SnapshotCmd::Show { snapshot } => {
            let id = resolve(&client, &snapshot, None).await?;
            show(ctx, &client, &id).await
        }
        SnapshotCmd::Delete { snapshot, wait } => {
            let id = resolve(&client, &snapshot, None).await?;
            let reply = client.delete(&format!("/v1/snapshots/{}", encode(&id))).await?;
            if let Some(op) = follow_operation(ctx, &client, reply, &wait).await? {
                if ctx.out.structured() {
                    ctx.out.data(&op)?;
                } else if ctx.out.quiet {
                    println!("{id}");
                } else {
                    println!("deleted snapshot {snapshot} ({id})");
                }
            }
            Ok(())
        }
    }
}
