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
    ("SIZE_BYTES", "size_bytes"),
    ("CREATED", "created_at"),
];

const SHOW_FIELDS: &[Column] = &[
    ("id", "id"),
    ("name", "name"),
    ("instance_id", "instance_id"),
    ("state", "state"),
    ("size_gb", "size_gb"),
    ("size_bytes", "size_bytes"),
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
    /// Make a template of a snapshot (an image of its disk that boots like the instance did).
    #[command(after_help = "Example:\n  nimbus snapshot promote before-upgrade --name web-golden")]
    Promote {
        snapshot: String,
        /// The new template's name.
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// The user cloud-init gives SSH keys to (default: the snapshot's template's).
        #[arg(long)]
        default_user: Option<String>,
        /// Visible to every project (needs an admin key).
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Download a snapshot as a standalone qcow2 image.
    #[command(after_help = "Example:\n  nimbus snapshot export before-upgrade web.qcow2")]
    Export { snapshot: String, file: std::path::PathBuf },
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
        SnapshotCmd::Promote { snapshot, name, description, default_user, public, wait } => {
            let id = resolve(&client, &snapshot, None).await?;
            let body = serde_json::json!({"name": name, "description": description, "default_user": default_user,
                "public": public});
            let reply = client.post(&format!("/v1/snapshots/{}/promote", encode(&id)), Some(&body)).await?;
            if let Some(op) = follow_operation(ctx, &client, reply, &wait).await? {
                if ctx.out.structured() {
                    ctx.out.data(&op)?;
                } else {
                    println!("{}", op["result"]["template_id"].as_str().unwrap_or_default());
                }
            }
            Ok(())
        }
        SnapshotCmd::Export { snapshot, file } => {
            use futures_util::StreamExt;
            use tokio::io::AsyncWriteExt;
            let id = resolve(&client, &snapshot, None).await?;
            let response = client
                .send_raw(client.builder(reqwest::Method::GET, &format!("/v1/snapshots/{}/export", encode(&id))), None)
                .await?;
            let tmp = file.with_extension("part");
            let mut out =
                tokio::fs::File::create(&tmp).await.map_err(|e| CliError::Usage(format!("{}: {e}", tmp.display())))?;
            let mut body = response.bytes_stream();
            let mut written = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| CliError::Network(format!("download interrupted: {e}")))?;
                out.write_all(&chunk).await.map_err(|e| CliError::Other(e.to_string()))?;
                written += chunk.len() as u64;
            }
            out.flush().await.map_err(|e| CliError::Other(e.to_string()))?;
            tokio::fs::rename(&tmp, &file).await.map_err(|e| CliError::Other(e.to_string()))?;
            if !ctx.out.quiet {
                eprintln!("wrote {} ({written} bytes)", file.display());
            }
            Ok(())
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
