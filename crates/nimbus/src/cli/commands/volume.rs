//! `nimbus volume ...`: block storage that outlives instances.

use clap::Subcommand;
use serde_json::json;

use super::{follow_operation, labels_map, looks_like_uuid, parse_label, pick_by_name, WaitArgs};
use crate::cli::client::{encode, CliError, Client};
use crate::cli::output::{str_field, Column};
use crate::cli::Ctx;

const COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("SIZE_GB", "size_gb"),
    ("STATE", "state"),
    ("INSTANCE", "instance_id"),
    ("ZONE", "zone"),
];

const SHOW_FIELDS: &[Column] = &[
    ("id", "id"),
    ("name", "name"),
    ("description", "description"),
    ("zone", "zone"),
    ("size_gb", "size_gb"),
    ("state", "state"),
    ("instance_id", "instance_id"),
    ("serial", "serial"),
    ("labels", "labels"),
    ("created_at", "created_at"),
];

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume (an empty disk of its own).
    #[command(after_help = "Example:\n  nimbus volume create data --size 10 --label env=prod")]
    Create {
        name: String,
        /// Size in GB.
        #[arg(long)]
        size: u64,
        #[arg(long)]
        description: Option<String>,
        /// Default: the server's zone.
        #[arg(long)]
        zone: Option<String>,
        /// A label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// An instance (id or name) to attach the new volume to.
        #[arg(long)]
        instance: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List volumes.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus volume list")]
    List,
    /// Show one volume.
    #[command(after_help = "Example:\n  nimbus volume show data")]
    Show { volume: String },
    /// Attach a volume to an instance (hot-plugged when it runs: no reboot).
    #[command(after_help = "Example:\n  nimbus volume attach data web")]
    Attach {
        volume: String,
        /// The instance (id or name).
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Detach a volume from its instance; its data stays.
    #[command(after_help = "Example:\n  nimbus volume detach data")]
    Detach {
        volume: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Grow a volume (an attached one under its running guest).
    #[command(after_help = "Example:\n  nimbus volume resize data --size 20")]
    Resize {
        volume: String,
        /// The new size in GB (larger than the current one).
        #[arg(long)]
        size: u64,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Put one of a volume's snapshots' data back into it (the volume must be detached).
    #[command(after_help = "Example:\n  nimbus volume revert data before-upgrade")]
    Revert {
        volume: String,
        /// The snapshot (id or name).
        snapshot: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// A volume's snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Delete a detached volume and its data.
    #[command(visible_alias = "rm", after_help = "Example:\n  nimbus volume delete data")]
    Delete {
        volume: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Take a snapshot of a volume's data (attached or not).
    #[command(after_help = "Example:\n  nimbus volume snapshot create data --name before-upgrade")]
    Create {
        volume: String,
        /// Default: the volume's name and the time.
        #[arg(long)]
        name: Option<String>,
        /// A label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List a volume's snapshots.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus volume snapshot list data")]
    List { volume: String },
    /// Delete one of a volume's snapshots.
    #[command(visible_alias = "rm", after_help = "Example:\n  nimbus volume snapshot delete data before-upgrade")]
    Delete {
        volume: String,
        snapshot: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

const SNAPSHOT_COLUMNS: &[Column] =
    &[("ID", "id"), ("NAME", "name"), ("SIZE_GB", "size_gb"), ("STATE", "state"), ("CREATED", "created_at")];

/// The id of one of a volume's snapshots given by id or by name.
async fn resolve_snapshot(client: &Client, volume_id: &str, wanted: &str) -> Result<String, CliError> {
    if looks_like_uuid(wanted) {
        return Ok(wanted.to_string());
    }
    let items = client.list_all(&format!("/v1/volumes/{}/snapshots", encode(volume_id)), &[], None).await?;
    Ok(str_field(&pick_by_name("snapshot", wanted, &items, "id")?, "id"))
}

/// The id of a volume given by id or by name.
pub async fn resolve(client: &Client, wanted: &str) -> Result<String, CliError> {
    if looks_like_uuid(wanted) {
        return Ok(wanted.to_string());
    }
    let items = client.list_all("/v1/volumes", &[], None).await?;
    Ok(str_field(&pick_by_name("volume", wanted, &items, "id")?, "id"))
}

async fn show(ctx: &Ctx, client: &Client, id: &str) -> Result<(), CliError> {
    let v = client.get(&format!("/v1/volumes/{}", encode(id))).await?;
    ctx.out.object(&v, SHOW_FIELDS, "id")
}

pub async fn run(ctx: &Ctx, cmd: VolumeCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    // An action's operation, followed as asked; then the volume as it is.
    let act = |id: String, action: &'static str, body: Option<serde_json::Value>, wait: WaitArgs| {
        let client = &client;
        async move {
            let reply = client.post(&format!("/v1/volumes/{}/{action}", encode(&id)), body.as_ref()).await?;
            if follow_operation(ctx, client, reply, &wait).await?.is_some() {
                show(ctx, client, &id).await?;
            }
            Ok::<(), CliError>(())
        }
    };
    match cmd {
        VolumeCmd::Create { name, size, description, zone, labels, instance, wait } => {
            let mut body = json!({"name": name, "size_gb": size, "labels": labels_map(&labels)});
            if let Some(i) = instance {
                body["instance_id"] = json!(super::instance::resolve(&client, &i).await?);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(z) = zone {
                body["zone"] = json!(z);
            }
            let reply = client.post("/v1/volumes", Some(&body)).await?;
            if let Some(op) = follow_operation(ctx, &client, reply, &wait).await? {
                show(ctx, &client, &str_field(&op, "target.id")).await?;
            }
            Ok(())
        }
        VolumeCmd::List => {
            let items = client.list_all("/v1/volumes", &[], None).await?;
            ctx.out.list(&items, COLUMNS, "id")
        }
        VolumeCmd::Show { volume } => show(ctx, &client, &resolve(&client, &volume).await?).await,
        VolumeCmd::Attach { volume, instance, wait } => {
            let id = resolve(&client, &volume).await?;
            let instance_id = super::instance::resolve(&client, &instance).await?;
            act(id, "attach", Some(json!({"instance_id": instance_id})), wait).await
        }
        VolumeCmd::Detach { volume, wait } => act(resolve(&client, &volume).await?, "detach", None, wait).await,
        VolumeCmd::Resize { volume, size, wait } => {
            act(resolve(&client, &volume).await?, "resize", Some(json!({"size_gb": size})), wait).await
        }
        VolumeCmd::Revert { volume, snapshot, wait } => {
            let id = resolve(&client, &volume).await?;
            let snapshot_id = resolve_snapshot(&client, &id, &snapshot).await?;
            act(id, "revert", Some(json!({"snapshot_id": snapshot_id})), wait).await
        }
        VolumeCmd::Snapshot(SnapshotCmd::Create { volume, name, labels, wait }) => {
            let id = resolve(&client, &volume).await?;
            let mut body = json!({"labels": labels_map(&labels)});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            let reply = client.post(&format!("/v1/volumes/{}/snapshots", encode(&id)), Some(&body)).await?;
            if let Some(op) = follow_operation(ctx, &client, reply, &wait).await? {
                let snapshot = str_field(&op, "result.snapshot_id");
                if snapshot.is_empty() {
                    ctx.out.data(&op)?;
                } else {
                    let s = client.get(&format!("/v1/volumes/{}/snapshots/{}", encode(&id), encode(&snapshot))).await?;
                    ctx.out.object(&s, SNAPSHOT_COLUMNS, "id")?;
                }
            }
            Ok(())
        }
        VolumeCmd::Snapshot(SnapshotCmd::List { volume }) => {
            let id = resolve(&client, &volume).await?;
            let items = client.list_all(&format!("/v1/volumes/{}/snapshots", encode(&id)), &[], None).await?;
            ctx.out.list(&items, SNAPSHOT_COLUMNS, "id")
        }
        VolumeCmd::Snapshot(SnapshotCmd::Delete { volume, snapshot, wait }) => {
            let id = resolve(&client, &volume).await?;
            let snapshot_id = resolve_snapshot(&client, &id, &snapshot).await?;
            let path = format!("/v1/volumes/{}/snapshots/{}", encode(&id), encode(&snapshot_id));
            let reply = client.delete(&path).await?;
            if let Some(op) = follow_operation(ctx, &client, reply, &wait).await? {
                if ctx.out.structured() {
                    ctx.out.data(&op)?;
                } else if !ctx.out.quiet {
                    println!("deleted snapshot {snapshot} ({snapshot_id}) of volume {volume}");
                }
            }
            Ok(())
        }
        VolumeCmd::Delete { volume, wait } => {
            let id = resolve(&client, &volume).await?;
            let reply = client.delete(&format!("/v1/volumes/{}", encode(&id))).await?;
            if let Some(op) = follow_operation(ctx, &client, reply, &wait).await? {
                if ctx.out.structured() {
                    ctx.out.data(&op)?;
                } else if ctx.out.quiet {
                    println!("{id}");
                } else {
                    println!("deleted volume {volume} ({id})");
                }
            }
            Ok(())
        }
    }
}
