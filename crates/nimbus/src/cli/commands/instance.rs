//! `nimbus instance ...`: every instance call of the native API, addressed by id or by name.

use std::path::PathBuf;

use base64::Engine as _;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{follow_operation, labels_map, looks_like_uuid, parse_label, pick_by_name, WaitArgs};
use crate::cli::client::{encode, CliError, Client};
use crate::cli::output::{str_field, Column};
use crate::cli::Ctx;

const LIST_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("TYPE", "instance_type"),
    ("TEMPLATE", "template"),
    ("DISK_GB", "disk_size_gb"),
    ("IP", "ip_addresses"),
    ("LABELS", "labels"),
];

const SHOW_FIELDS: &[Column] = &[
    ("id", "id"),
    ("name", "name"),
    ("hostname", "hostname"),
    ("description", "description"),
    ("state", "state"),
    ("rescue", "rescue"),
    ("zone", "zone"),
    ("type", "instance_type"),
    ("vcpus", "vcpus"),
    ("memory_mib", "memory_mib"),
    ("gpus", "gpus"),
    ("template", "template"),
    ("disk_size_gb", "disk_size_gb"),
    ("ip_addresses", "ip_addresses"),
    ("mac_address", "mac_address"),
    ("labels", "labels"),
    ("system_labels", "system_labels"),
    ("ssh_keys", "ssh_keys"),
    ("protected", "protected"),
    ("tpm_enabled", "tpm_enabled"),
    ("volumes", "volumes"),
    ("boot_volume", "boot_volume.volume_id"),
    ("operation", "operation_id"),
    ("created_at", "created_at"),
    ("updated_at", "updated_at"),
];

#[derive(Subcommand, Debug)]
pub enum InstanceCmd {
    /// Create an instance and wait until it runs.
    #[command(
        after_help = "Example:\n  nimbus instance create web --type standard.small --template busybox --label env=prod"
    )]
    Create {
        name: String,
        /// Instance type, e.g. standard.small (`nimbus type list`).
        #[arg(long = "type", value_name = "TYPE")]
        instance_type: String,
        /// Template name or id (`nimbus template list`); left out with --boot-from, whose volume has one.
        #[arg(long, required_unless_present = "boot_from")]
        template: Option<String>,
        /// Disk size in GB (default: the type's default).
        #[arg(long, value_name = "GB")]
        disk_size: Option<u64>,
        /// A label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Cloud-init user data (a `#!` script or `#cloud-config`), sent base64-encoded.
        #[arg(long, value_name = "FILE")]
        user_data_file: Option<PathBuf>,
        /// Name or id of a registered SSH key (repeatable).
        #[arg(long = "ssh-key", value_name = "KEY")]
        ssh_keys: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        /// Create it stopped.
        #[arg(long)]
        no_start: bool,
        /// Refuse deletion until `nimbus instance unprotect`.
        #[arg(long)]
        protect: bool,
        /// A volume (name or id, `available`) attached before the first boot (repeatable).
        #[arg(long = "volume", value_name = "VOLUME")]
        volumes: Vec<String>,
        /// Boot from a new volume made from the template, kept when the instance is deleted.
        #[arg(long, conflicts_with = "boot_from")]
        boot_volume: bool,
        /// Boot from this volume (name or id), made from a template by an earlier --boot-volume.
        #[arg(long, value_name = "VOLUME")]
        boot_from: Option<String>,
        /// Delete the boot volume with the instance.
        #[arg(long)]
        delete_boot_volume: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List instances, optionally filtered.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  nimbus instance list -l env=prod\n  nimbus instance list --state running -o json"
    )]
    List {
        /// Label selector: env=prod, tier!=web, team, !legacy (repeatable; all must match).
        #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
        selectors: Vec<String>,
        /// Only instances in this state (running, stopped, ...).
        #[arg(long)]
        state: Option<String>,
        /// Only instances with this name.
        #[arg(long)]
        name: Option<String>,
        /// At most this many instances.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one instance.
    #[command(after_help = "Example:\n  nimbus instance show web")]
    Show { instance: String },
    /// Change an instance's name, description or labels.
    #[command(after_help = "Example:\n  nimbus instance update web --label tier=front --remove-label legacy")]
    Update {
        instance: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Set a label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Remove a label (repeatable).
        #[arg(long = "remove-label", value_name = "KEY")]
        remove_labels: Vec<String>,
        /// Only if the instance still has this ETag (from `show -v`); otherwise exit 4.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
    },
    /// Delete an instance and its disk.
    #[command(visible_alias = "rm", after_help = "Example:\n  nimbus instance delete web")]
    Delete {
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Start a stopped instance.
    #[command(after_help = "Examples:\n  nimbus instance start web\n  nimbus instance start web --rescue")]
    Start {
        instance: String,
        /// Boot the host's rescue system instead of the instance's own, until it stops: its disks attached but not
        /// mounted, no user-data run; log in on its console with the instance's password or SSH keys.
        #[arg(long)]
        rescue: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a running instance (ACPI shutdown, forced after a grace period).
    #[command(after_help = "Example:\n  nimbus instance stop web")]
    Stop {
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Reboot a running instance.
    #[command(after_help = "Example:\n  nimbus instance reboot web")]
    Reboot {
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Reinstall the instance from its template (or another one); its disk is replaced.
    #[command(after_help = "Example:\n  nimbus instance reset web --template busybox")]
    Reset {
        instance: String,
        #[arg(long)]
        template: Option<String>,
        #[arg(long, value_name = "GB")]
        disk_size: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change the instance type.
    #[command(after_help = "Example:\n  nimbus instance scale web standard.medium")]
    Scale {
        instance: String,
        #[arg(value_name = "TYPE")]
        instance_type: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Grow the disk.
    #[command(after_help = "Example:\n  nimbus instance resize-disk web 20")]
    ResizeDisk {
        instance: String,
        #[arg(value_name = "GB")]
        disk_size: u64,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Snapshot the instance's disk.
    #[command(after_help = "Example:\n  nimbus instance snapshot web --name before-upgrade")]
    Snapshot {
        instance: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Put a snapshot back onto the (stopped) instance's disk.
    #[command(after_help = "Example:\n  nimbus instance revert web before-upgrade")]
    Revert {
        instance: String,
        /// Snapshot id or name.
        snapshot: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show the instance's generated password.
    #[command(after_help = "Example:\n  nimbus instance password web")]
    Password { instance: String },
    /// Generate a new password.
    #[command(after_help = "Example:\n  nimbus instance reset-password web")]
    ResetPassword {
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Refuse deletion of the instance.
    #[command(after_help = "Example:\n  nimbus instance protect web")]
    Protect { instance: String },
    /// Allow deletion again.
    #[command(after_help = "Example:\n  nimbus instance unprotect web")]
    Unprotect { instance: String },
    /// Print the serial console log; --follow attaches to the live console (detach with Ctrl-]).
    #[command(after_help = "Examples:\n  nimbus instance console web\n  nimbus instance console web -f")]
    Console {
        instance: String,
        /// Attach interactively: keystrokes go to the guest, Ctrl-] detaches.
        #[arg(short, long)]
        follow: bool,
    },
    /// Show the instance's resource use (CPU time, memory, disk, network).
    #[command(after_help = "Example:\n  nimbus instance metrics web")]
    Metrics { instance: String },
    /// Log in with ssh as the template's default user, through the API (no route to the instance needed).
    #[command(
        after_help = "Examples:\n  nimbus instance ssh web\n  nimbus instance ssh web -i ~/.ssh/id_ed25519 -- uname -a"
    )]
    Ssh {
        instance: String,
        /// The private key (default: ssh's own, e.g. ~/.ssh/id_ed25519 or the agent's).
        #[arg(short = 'i', long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Log in as this user instead of the template's default user.
        #[arg(short = 'l', long)]
        user: Option<String>,
        /// Arguments for ssh after the destination (a command to run, say).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Publish a port of the instance on 127.0.0.1 for as long as this runs (Ctrl-C ends it).
    #[command(name = "port-forward", after_help = "Example:\n  nimbus instance port-forward web 8080:80")]
    PortForward {
        instance: String,
        /// LOCAL:REMOTE (a local port of 0 picks a free one).
        #[arg(value_name = "LOCAL:REMOTE")]
        ports: String,
    },
    /// Join stdin and stdout to a TCP port of the instance (ssh's ProxyCommand).
    #[command(after_help = "Example:\n  ssh -o ProxyCommand='nimbus instance tunnel web 22' debian@web")]
    Tunnel { instance: String, port: u16 },
    /// Show the guest's own network interfaces and addresses (from its guest agent).
    #[command(after_help = "Example:\n  nimbus instance guest web")]
    Guest { instance: String },
}

/// The id of the instance named `wanted` (or `wanted` itself when it is an id).
pub async fn resolve(client: &Client, wanted: &str) -> Result<String, CliError> {
    if looks_like_uuid(wanted) {
        return Ok(wanted.to_string());
    }
    let items = client.list_all("/v1/instances", &[("name", wanted.to_string())], None).await?;
    Ok(str_field(&pick_by_name("instance", wanted, &items, "id")?, "id"))
}

fn instance_path(id: &str) -> String {
    format!("/v1/instances/{}", encode(id))
}

pub async fn show(ctx: &Ctx, client: &Client, id: &str) -> Result<(), CliError> {
    let instance = client.get(&instance_path(id)).await?;
    ctx.out.object(&instance, SHOW_FIELDS, "id")
}

/// Starts an action, follows its operation and, once done, shows the instance as it now is.
async fn act(
    ctx: &Ctx,
    client: &Client,
    id: &str,
    action: &str,
    body: Option<Value>,
    wait: &WaitArgs,
) -> Result<(), CliError> {
    let reply = client.post(&format!("{}/{action}", instance_path(id)), body.as_ref()).await?;
    if follow_operation(ctx, client, reply, wait).await?.is_some() {
        show(ctx, client, id).await?;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: InstanceCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        InstanceCmd::Create {
            name,
            instance_type,
            template,
            disk_size,
            labels,
            user_data_file,
            ssh_keys,
            description,
            hostname,
            no_start,
            protect,
            volumes,
            boot_volume,
            boot_from,
            delete_boot_volume,
            wait,
        } => {
            let mut attached = Vec::new();
            for v in &volumes {
                attached.push(json!({"volume_id": super::volume::resolve(&client, v).await?}));
            }
            let mut body = json!({
                "name": name,
                "instance_type": instance_type,
                "template": template.unwrap_or_default(),
                "volumes": attached,
                "labels": labels_map(&labels),
                "ssh_keys": ssh_keys,
                "auto_start": !no_start,
                "protected": protect,
            });
            let obj = body.as_object_mut().expect("a JSON object literal");
            if let Some(gb) = disk_size {
                obj.insert("disk_size_gb".into(), json!(gb));
            }
            if let Some(d) = description {
                obj.insert("description".into(), json!(d));
            }
            if let Some(h) = hostname {
                obj.insert("hostname".into(), json!(h));
            }
            match (boot_volume, boot_from) {
                (_, Some(v)) => {
                    let id = super::volume::resolve(&client, &v).await?;
                    obj.insert(
                        "boot_volume".into(),
                        json!({"volume_id": id, "delete_on_termination": delete_boot_volume}),
                    );
                }
                (true, None) => {
                    obj.insert("boot_volume".into(), json!({"delete_on_termination": delete_boot_volume}));
                }
                (false, None) if delete_boot_volume => {
                    return Err(CliError::Usage("--delete-boot-volume goes with --boot-volume or --boot-from".into()))
                }
                (false, None) => {}
            }
            if let Some(path) = user_data_file {
                let data = std::fs::read(&path)
                    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
                obj.insert("user_data".into(), json!(base64::engine::general_purpose::STANDARD.encode(data)));
            }
            let reply = client.post("/v1/instances", Some(&body)).await?;
            if let Some(op) = follow_operation(ctx, &client, reply, &wait).await? {
                show(ctx, &client, &str_field(&op, "target.id")).await?;
            }
            Ok(())
        }
        InstanceCmd::List { selectors, state, name, limit } => {
            let mut query = Vec::new();
            if !selectors.is_empty() {
                query.push(("labels", selectors.join(",")));
            }
            if let Some(s) = state {
                query.push(("state", s));
            }
            if let Some(n) = name {
                query.push(("name", n));
            }
            let items = client.list_all("/v1/instances", &query, limit).await?;
            ctx.out.list(&items, LIST_COLUMNS, "id")
        }
        InstanceCmd::Show { instance } => {
            let id = resolve(&client, &instance).await?;
            show(ctx, &client, &id).await
        }
        InstanceCmd::Update { instance, name, description, labels, remove_labels, if_match } => {
            let id = resolve(&client, &instance).await?;
            let mut patch = Map::new();
            if let Some(n) = name {
                patch.insert("name".into(), json!(n));
            }
            if let Some(d) = description {
                patch.insert("description".into(), json!(d));
            }
            if !labels.is_empty() || !remove_labels.is_empty() {
                let mut l = Map::new();
                for k in remove_labels {
                    l.insert(k, Value::Null);
                }
                for (k, v) in labels {
                    l.insert(k, json!(v));
                }
                patch.insert("labels".into(), Value::Object(l));
            }
            if patch.is_empty() {
                return Err(CliError::Usage(
                    "nothing to update: give --name, --description, --label or --remove-label".into(),
                ));
            }
            let mut req = client
                .builder(Method::PATCH, &instance_path(&id))
                .header(reqwest::header::CONTENT_TYPE, "application/merge-patch+json")
                .body(Value::Object(patch.clone()).to_string());
            if let Some(tag) = if_match {
                let tag = if tag.starts_with('"') || tag.starts_with("W/") || tag == "*" {
                    tag
                } else {
                    format!("\"{tag}\"")
                };
                req = req.header(reqwest::header::IF_MATCH, tag);
            }
            if client.verbose() {
                eprintln!("> {}", Value::Object(patch));
            }
            let resp = client.send_raw(req, None).await?;
            let text = resp.text().await.map_err(|e| CliError::Network(format!("reading the response: {e}")))?;
            let updated: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Network(format!("the server answered something that is not JSON: {e}")))?;
            ctx.out.object(&updated, SHOW_FIELDS, "id")
        }
        InstanceCmd::Delete { instance, wait } => {
            let id = resolve(&client, &instance).await?;
            let reply = client.delete(&instance_path(&id)).await?;
            if let Some(op) = follow_operation(ctx, &client, reply, &wait).await? {
                if ctx.out.structured() {
                    ctx.out.data(&op)?;
                } else if ctx.out.quiet {
                    println!("{id}");
                } else {
                    println!("deleted instance {instance} ({id})");
                }
            }
            Ok(())
        }
        InstanceCmd::Start { instance, rescue, wait } => {
            let id = resolve(&client, &instance).await?;
            let body = rescue.then(|| json!({"rescue": true}));
            act(ctx, &client, &id, "start", body, &wait).await
        }
        InstanceCmd::Stop { instance, wait } => {
            let id = resolve(&client, &instance).await?;
            act(ctx, &client, &id, "stop", None, &wait).await
        }
        InstanceCmd::Reboot { instance, wait } => {
            let id = resolve(&client, &instance).await?;
            act(ctx, &client, &id, "reboot", None, &wait).await
        }
        InstanceCmd::Reset { instance, template, disk_size, wait } => {
            let id = resolve(&client, &instance).await?;
            let mut body = Map::new();
            if let Some(t) = template {
                body.insert("template".into(), json!(t));
            }
            if let Some(gb) = disk_size {
                body.insert("disk_size_gb".into(), json!(gb));
            }
            let body = if body.is_empty() { None } else { Some(Value::Object(body)) };
            act(ctx, &client, &id, "reset", body, &wait).await
        }
        InstanceCmd::Scale { instance, instance_type, wait } => {
            let id = resolve(&client, &instance).await?;
            act(ctx, &client, &id, "scale", Some(json!({ "instance_type": instance_type })), &wait).await
        }
        InstanceCmd::ResizeDisk { instance, disk_size, wait } => {
            let id = resolve(&client, &instance).await?;
            act(ctx, &client, &id, "resize-disk", Some(json!({ "disk_size_gb": disk_size })), &wait).await
        }
        InstanceCmd::Snapshot { instance, name, wait } => {
            let id = resolve(&client, &instance).await?;
            let body = name.map(|n| json!({ "name": n }));
            let reply = client.post(&format!("{}/create-snapshot", instance_path(&id)), body.as_ref()).await?;
            if let Some(op) = follow_operation(ctx, &client, reply, &wait).await? {
                match op.get("result").and_then(|r| r.get("snapshot_id")).and_then(Value::as_str) {
                    Some(snap) => super::snapshot::show(ctx, &client, snap).await?,
                    None => ctx.out.object(&op, super::operation::SHOW_FIELDS, "id")?,
                }
            }
            Ok(())
        }
        InstanceCmd::Revert { instance, snapshot, wait } => {
            let id = resolve(&client, &instance).await?;
            let snapshot_id = super::snapshot::resolve(&client, &snapshot, Some(&id)).await?;
            act(ctx, &client, &id, "revert-snapshot", Some(json!({ "snapshot_id": snapshot_id })), &wait).await
        }
        InstanceCmd::Password { instance } => {
            let id = resolve(&client, &instance).await?;
            let p = client.get(&format!("{}/password", instance_path(&id))).await?;
            if ctx.out.structured() {
                ctx.out.data(&p)
            } else {
                println!("{}", str_field(&p, "password"));
                Ok(())
            }
        }
        InstanceCmd::ResetPassword { instance, wait } => {
            let id = resolve(&client, &instance).await?;
            let reply = client.post(&format!("{}/reset-password", instance_path(&id)), None).await?;
            if follow_operation(ctx, &client, reply, &wait).await?.is_some() {
                let p = client.get(&format!("{}/password", instance_path(&id))).await?;
                if ctx.out.structured() {
                    ctx.out.data(&p)?;
                } else {
                    println!("{}", str_field(&p, "password"));
                }
            }
            Ok(())
        }
        InstanceCmd::Protect { instance } => protection(ctx, &client, &instance, true).await,
        InstanceCmd::Unprotect { instance } => protection(ctx, &client, &instance, false).await,
        InstanceCmd::Console { instance, follow } => {
            let id = resolve(&client, &instance).await?;
            if follow {
                super::console::attach(&client, &id).await
            } else {
                let log = client.get_text(&format!("{}/console", instance_path(&id))).await?;
                print!("{log}");
                Ok(())
            }
        }
        InstanceCmd::Ssh { instance, identity, user, args } => {
            let id = resolve(&client, &instance).await?;
            let vm = client.get(&instance_path(&id)).await?;
            let user = match user {
                Some(u) => u,
                None => {
                    let template = str_field(&vm, "template");
                    let t = client.get(&format!("/v1/templates/{}", encode(&template))).await?;
                    let u = str_field(&t, "default_user");
                    if u.is_empty() {
                        "root".to_string()
                    } else {
                        u
                    }
                }
            };
            let status = super::tunnel::ssh(&client, &id, &str_field(&vm, "name"), &user, identity.as_deref(), &args)?;
            match status.code() {
                Some(0) => Ok(()),
                Some(code) => Err(CliError::Exit(code.clamp(1, 255) as u8)),
                None => Err(CliError::Exit(255)),
            }
        }
        InstanceCmd::PortForward { instance, ports } => {
            let (local, remote) = ports
                .split_once(':')
                .and_then(|(l, r)| Some((l.parse::<u16>().ok()?, r.parse::<u16>().ok().filter(|p| *p > 0)?)))
                .ok_or_else(|| CliError::Usage(format!("{ports:?}: give LOCAL:REMOTE, two port numbers")))?;
            let id = resolve(&client, &instance).await?;
            super::tunnel::forward(&client, &id, local, remote).await
        }
        InstanceCmd::Tunnel { instance, port } => {
            let id = resolve(&client, &instance).await?;
            super::tunnel::stdio(&client, &id, port).await
        }
        InstanceCmd::Guest { instance } => {
            let id = resolve(&client, &instance).await?;
            let g = client.get(&format!("{}/guest", instance_path(&id))).await?;
            if ctx.out.structured() {
                return ctx.out.data(&g);
            }
            for i in g["interfaces"].as_array().into_iter().flatten() {
                let addrs: Vec<&str> =
                    i["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
                println!("{}\t{}\t{}", str_field(i, "name"), str_field(i, "mac_address"), addrs.join(" "));
            }
            Ok(())
        }
        InstanceCmd::Metrics { instance } => {
            let id = resolve(&client, &instance).await?;
            let m = client.get(&format!("{}/metrics", instance_path(&id))).await?;
            ctx.out.object(
                &m,
                &[
                    ("cpu_time_ns", "cpu_time_ns"),
                    ("memory_rss_bytes", "memory_rss_bytes"),
                    ("disk_used_bytes", "disk_used_bytes"),
                    ("net_rx_bytes", "net_rx_bytes"),
                    ("net_tx_bytes", "net_tx_bytes"),
                ],
                "cpu_time_ns",
            )
        }
    }
}

async fn protection(ctx: &Ctx, client: &Client, instance: &str, on: bool) -> Result<(), CliError> {
    let id = resolve(client, instance).await?;
    let action = if on { "add-protection" } else { "remove-protection" };
    let reply = client.post(&format!("{}/{action}", instance_path(&id)), None).await?;
    ctx.out.object(&reply.body, SHOW_FIELDS, "id")
}
