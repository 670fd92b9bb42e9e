//! `nimbus host ...` (operators): the hosts of the cloud, and the tokens their agents run with.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::cli::client::{encode, CliError};
use crate::cli::output::{str_field, Column};
use crate::cli::Ctx;

const HOST_COLUMNS: &[Column] = &[
    ("NAME", "name"),
    ("STATE", "state"),
    ("INSTANCES", "instances"),
    ("VCPUS", "allocation.vcpus"),
    ("OF", "capacity.vcpus"),
    ("MEMORY_MIB", "allocation.memory_mib"),
    ("OF", "capacity.memory_mib"),
    ("ACCEL", "accelerator"),
    ("DRIVER", "driver"),
];
const HOST_FIELDS: &[Column] = &[
    ("name", "name"),
    ("id", "id"),
    ("zone", "zone"),
    ("state", "state"),
    ("admin_state", "admin_state"),
    ("reachable", "reachable"),
    ("instances", "instances"),
    ("capacity", "capacity"),
    ("allocation", "allocation"),
    ("drained", "drained"),
    ("accelerator", "accelerator"),
    ("driver", "driver"),
    ("underlay_address", "underlay_address"),
    ("agent_version", "agent_version"),
    ("registered_at", "registered_at"),
];
const TOKEN_COLUMNS: &[Column] = &[("ID", "id"), ("HOST", "host"), ("CREATED", "created_at")];

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// List hosts with their state and what they carry.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus host list")]
    List,
    /// Show one host.
    #[command(after_help = "Example:\n  nimbus host show node-2")]
    Show { name: String },
    /// Stop placing new instances on a host; what runs there keeps running.
    #[command(after_help = "Example:\n  nimbus host disable node-2")]
    Disable { name: String },
    /// Place instances on a host again.
    #[command(after_help = "Example:\n  nimbus host enable node-2")]
    Enable { name: String },
    /// Stop placing on a host and wait until what runs there has been moved or deleted.
    #[command(after_help = "Example:\n  nimbus host drain node-2 --no-wait")]
    Drain {
        name: String,
        /// Return at once instead of waiting for the host to be empty.
        #[arg(long)]
        no_wait: bool,
    },
    /// Move the instances of a host that stopped answering: recreate them elsewhere from their templates
    /// (their disks' contents are lost), or leave them stopped.
    #[command(
        after_help = "Examples:\n  nimbus host evacuate node-2\n  nimbus host evacuate node-2 --mode stop --recreate web-1"
    )]
    Evacuate {
        name: String,
        /// recreate or stop, for every instance not named otherwise.
        #[arg(long, default_value = "recreate")]
        mode: String,
        /// Instance ids to recreate whatever --mode says.
        #[arg(long, value_name = "ID")]
        recreate: Vec<String>,
        /// Instance ids to leave stopped whatever --mode says.
        #[arg(long, value_name = "ID")]
        stop: Vec<String>,
    },
    /// Host tokens: the credentials agents run with.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Mint a token for the agent of host NAME; it is shown this once.
    #[command(after_help = "Example:\n  nimbus host token create node-2")]
    Create { host: String },
    /// List host tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a host token: its agent's next call is refused.
    #[command(visible_alias = "rm")]
    Revoke { id: String },
}

pub async fn run(ctx: &Ctx, cmd: HostCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    let act = |name: &str, action: &str| format!("/v1/hosts/{}/{action}", encode(name));
    match cmd {
        HostCmd::List => {
            let items = client.list_all("/v1/hosts", &[], None).await?;
            ctx.out.list(&items, HOST_COLUMNS, "name")
        }
        HostCmd::Show { name } => {
            let h = client.get(&format!("/v1/hosts/{}", encode(&name))).await?;
            ctx.out.object(&h, HOST_FIELDS, "name")
        }
        HostCmd::Disable { name } => {
            let h = client.post(&act(&name, "disable"), None).await?.body;
            ctx.out.object(&h, HOST_FIELDS, "name")
        }
        HostCmd::Enable { name } => {
            let h = client.post(&act(&name, "enable"), None).await?.body;
            ctx.out.object(&h, HOST_FIELDS, "name")
        }
        HostCmd::Drain { name, no_wait } => {
            let mut h = client.post(&act(&name, "drain"), None).await?.body;
            let mut last = u64::MAX;
            while !no_wait && h["drained"] != json!(true) {
                let left = h["instances"].as_u64().unwrap_or(0);
                if left != last && !ctx.out.quiet {
                    eprintln!("host {name} is draining: {left} instance(s) left to move or delete");
                    last = left;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                h = client.get(&format!("/v1/hosts/{}", encode(&name))).await?;
                if h["admin_state"] != json!("draining") {
                    return Err(CliError::OperationFailed(format!(
                        "host {name} stopped draining (it is {} now)",
                        str_field(&h, "admin_state")
                    )));
                }
            }
            ctx.out.object(&h, HOST_FIELDS, "name")
        }
        HostCmd::Evacuate { name, mode, recreate, stop } => {
            let mut instances = serde_json::Map::new();
            for id in recreate {
                instances.insert(id, json!("recreate"));
            }
            for id in stop {
                instances.insert(id, json!("stop"));
            }
            let reply =
                client.post(&act(&name, "evacuate"), Some(&json!({ "mode": mode, "instances": instances }))).await?;
            let ops: Vec<Value> = reply.body["items"].as_array().cloned().unwrap_or_default();
            let columns: &[Column] =
                &[("OPERATION", "id"), ("INSTANCE", "target.id"), ("STATE", "state"), ("MESSAGE", "message")];
            ctx.out.list(&ops, columns, "id")
        }
        HostCmd::Token(TokenCmd::Create { host }) => {
            let t = client.post("/v1/host-tokens", Some(&json!({ "host": host }))).await?.body;
            if ctx.out.structured() || ctx.out.quiet {
                return ctx.out.object(&t, &[], "token");
            }
            ctx.out.object(&t, &[("id", "id"), ("host", "host"), ("token", "token")], "id")?;
            eprintln!("the token is shown only this once: on the host, run\n  nimbus agent --server <URL> --token <token> --name {}", str_field(&t, "host"));
            Ok(())
        }
        HostCmd::Token(TokenCmd::List) => {
            let items = client.list_all("/v1/host-tokens", &[], None).await?;
            ctx.out.list(&items, TOKEN_COLUMNS, "id")
        }
        HostCmd::Token(TokenCmd::Revoke { id }) => {
            client.delete(&format!("/v1/host-tokens/{}", encode(&id))).await?;
            if !ctx.out.quiet {
                println!("revoked host token {id}");
            }
            Ok(())
        }
    }
}
