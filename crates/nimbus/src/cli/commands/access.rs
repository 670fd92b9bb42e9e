//! `nimbus ssh-key|api-key|project ...` and `nimbus whoami`: who may do what, and with which keys.

use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::{looks_like_uuid, pick_by_name};
use crate::cli::client::{encode, CliError, Client};
use crate::cli::output::{str_field, Column};
use crate::cli::Ctx;

const SSH_KEY_COLUMNS: &[Column] =
    &[("ID", "id"), ("NAME", "name"), ("FINGERPRINT", "fingerprint"), ("CREATED", "created_at")];
const SSH_KEY_FIELDS: &[Column] = &[
    ("id", "id"),
    ("name", "name"),
    ("fingerprint", "fingerprint"),
    ("public_key", "public_key"),
    ("created_at", "created_at"),
];
const API_KEY_COLUMNS: &[Column] =
    &[("KEY_ID", "key_id"), ("NAME", "name"), ("ROLE", "role"), ("PROJECT", "project_id"), ("CREATED", "created_at")];
const PROJECT_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("NUMERIC_ID", "numeric_id"),
    ("INSTANCES", "quota.instances"),
    ("VCPUS", "quota.vcpus"),
    ("MEMORY_MIB", "quota.memory_mib"),
    ("DISK_GB", "quota.disk_gb"),
    ("VOLUME_GB", "quota.volume_gb"),
];
const PROJECT_FIELDS: &[Column] = &[
    ("id", "id"),
    ("name", "name"),
    ("numeric_id", "numeric_id"),
    ("organization_id", "organization_id"),
    ("quota", "quota"),
    ("usage", "usage"),
    ("created_at", "created_at"),
];
const WHOAMI_FIELDS: &[Column] = &[
    ("key_id", "key_id"),
    ("role", "role"),
    ("project", "project.name"),
    ("project_id", "project.id"),
    ("project_numeric_id", "project.numeric_id"),
    ("organization", "organization.name"),
    ("organization_id", "organization.id"),
    ("zone", "zone.name"),
    ("zone_numeric_id", "zone.numeric_id"),
];

#[derive(Subcommand, Debug)]
pub enum SshKeyCmd {
    /// Register an SSH public key.
    #[command(
        after_help = "Examples:\n  nimbus ssh-key add laptop --file ~/.ssh/id_ed25519.pub\n  nimbus ssh-key add ci --public-key \"ssh-ed25519 AAAA... ci\""
    )]
    Add {
        name: String,
        /// The public key line itself.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        public_key: Option<String>,
        /// A file holding the public key line.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// List SSH keys.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus ssh-key list")]
    List,
    /// Show one SSH key.
    #[command(after_help = "Example:\n  nimbus ssh-key show laptop")]
    Show { key: String },
    /// Delete an SSH key.
    #[command(visible_alias = "rm", after_help = "Example:\n  nimbus ssh-key delete laptop")]
    Delete { key: String },
}

#[derive(Subcommand, Debug)]
pub enum ApiKeyCmd {
    /// Create an API key; its secret is shown this once.
    #[command(after_help = "Example:\n  nimbus api-key create ci --role member")]
    Create {
        name: String,
        /// admin, member or read-only.
        #[arg(long, default_value = "member")]
        role: String,
        /// Project id or name (default: the caller's project).
        #[arg(long)]
        project: Option<String>,
    },
    /// List API keys (never their secrets).
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus api-key list")]
    List,
    /// Delete (revoke) an API key.
    #[command(visible_alias = "rm", after_help = "Example:\n  nimbus api-key delete NIMKEYID")]
    Delete { key_id: String },
}

#[derive(Subcommand, Debug)]
pub enum ProjectCmd {
    /// List the organization's projects.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus project list")]
    List,
    /// Create a project.
    #[command(after_help = "Example:\n  nimbus project create staging")]
    Create { name: String },
    /// Show a project with its usage against its quota.
    #[command(after_help = "Example:\n  nimbus project show staging")]
    Show { project: String },
    /// Show a project's quota and usage, or change it with the flags.
    #[command(
        after_help = "Examples:\n  nimbus project quota staging\n  nimbus project quota staging --instances 20 --vcpus 40"
    )]
    Quota {
        project: String,
        #[arg(long)]
        instances: Option<u64>,
        #[arg(long)]
        vcpus: Option<u64>,
        #[arg(long)]
        memory_mib: Option<u64>,
        #[arg(long)]
        disk_gb: Option<u64>,
        /// The total size of the project's volumes.
        #[arg(long)]
        volume_gb: Option<u64>,
    },
}

pub async fn run_ssh_key(ctx: &Ctx, cmd: SshKeyCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        SshKeyCmd::Add { name, public_key, file } => {
            let public_key = match (public_key, file) {
                (Some(k), _) => k,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", f.display())))?
                    .trim()
                    .to_string(),
                (None, None) => return Err(CliError::Usage("give --public-key or --file".into())),
            };
            let key = client.post("/v1/ssh-keys", Some(&json!({ "name": name, "public_key": public_key }))).await?;
            ctx.out.object(&key.body, SSH_KEY_FIELDS, "id")
        }
        SshKeyCmd::List => {
            let items = client.list_all("/v1/ssh-keys", &[], None).await?;
            ctx.out.list(&items, SSH_KEY_COLUMNS, "id")
        }
        SshKeyCmd::Show { key } => {
            let k = client.get(&format!("/v1/ssh-keys/{}", encode(&key))).await?;
            ctx.out.object(&k, SSH_KEY_FIELDS, "id")
        }
        SshKeyCmd::Delete { key } => {
            client.delete(&format!("/v1/ssh-keys/{}", encode(&key))).await?;
            done(ctx, &key, &format!("deleted ssh key {key}"))
        }
    }
}

pub async fn run_api_key(ctx: &Ctx, cmd: ApiKeyCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        ApiKeyCmd::Create { name, role, project } => {
            let mut body = json!({ "name": name, "role": role });
            if let Some(p) = project {
                body["project_id"] = json!(resolve_project(&client, &p).await?);
            }
            let key = client.post("/v1/api-keys", Some(&body)).await?.body;
            if ctx.out.structured() || ctx.out.quiet {
                return ctx.out.object(&key, &[], "key_id");
            }
            let fields: &[Column] = &[
                ("key_id", "key_id"),
                ("secret", "secret"),
                ("name", "name"),
                ("role", "role"),
                ("project_id", "project_id"),
                ("created_at", "created_at"),
            ];
            ctx.out.object(&key, fields, "key_id")?;
            eprintln!("the secret is shown only this once; use it as NIMBUS_TOKEN");
            Ok(())
        }
        ApiKeyCmd::List => {
            let items = client.list_all("/v1/api-keys", &[], None).await?;
            ctx.out.list(&items, API_KEY_COLUMNS, "key_id")
        }
        ApiKeyCmd::Delete { key_id } => {
            client.delete(&format!("/v1/api-keys/{}", encode(&key_id))).await?;
            done(ctx, &key_id, &format!("deleted api key {key_id}"))
        }
    }
}

async fn resolve_project(client: &Client, wanted: &str) -> Result<String, CliError> {
    if looks_like_uuid(wanted) {
        return Ok(wanted.to_string());
    }
    let items = client.list_all("/v1/projects", &[], None).await?;
    Ok(str_field(&pick_by_name("project", wanted, &items, "id")?, "id"))
}

pub async fn run_project(ctx: &Ctx, cmd: ProjectCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        ProjectCmd::List => {
            let items = client.list_all("/v1/projects", &[], None).await?;
            ctx.out.list(&items, PROJECT_COLUMNS, "id")
        }
        ProjectCmd::Create { name } => {
            let p = client.post("/v1/projects", Some(&json!({ "name": name }))).await?.body;
            ctx.out.object(&p, PROJECT_FIELDS, "id")
        }
        ProjectCmd::Show { project } => {
            let id = resolve_project(&client, &project).await?;
            let p = client.get(&format!("/v1/projects/{}", encode(&id))).await?;
            ctx.out.object(&p, PROJECT_FIELDS, "id")
        }
        ProjectCmd::Quota { project, instances, vcpus, memory_mib, disk_gb, volume_gb } => {
            let id = resolve_project(&client, &project).await?;
            let path = format!("/v1/projects/{}", encode(&id));
            let mut p = client.get(&path).await?;
            if instances.is_some()
                || vcpus.is_some()
                || memory_mib.is_some()
                || disk_gb.is_some()
                || volume_gb.is_some()
            {
                // The server replaces the whole quota, so the fields not given keep their current values.
                let mut quota = p.get("quota").cloned().unwrap_or_else(|| json!({}));
                for (k, v) in [
                    ("instances", instances),
                    ("vcpus", vcpus),
                    ("memory_mib", memory_mib),
                    ("disk_gb", disk_gb),
                    ("volume_gb", volume_gb),
                ] {
                    if let Some(v) = v {
                        quota[k] = json!(v);
                    }
                }
                client.send(Method::PUT, &format!("{path}/quota"), Some(&quota)).await?;
                p = client.get(&path).await?;
            }
            if ctx.out.structured() || ctx.out.quiet {
                return ctx.out.object(&p, PROJECT_FIELDS, "id");
            }
            let rows: Vec<Vec<String>> = ["instances", "vcpus", "memory_mib", "disk_gb", "volume_gb"]
                .iter()
                .map(|k| {
                    vec![k.to_string(), str_field(&p, &format!("usage.{k}")), str_field(&p, &format!("quota.{k}"))]
                })
                .collect();
            print!("{}", crate::cli::output::table(&["RESOURCE".into(), "USED".into(), "QUOTA".into()], &rows));
            Ok(())
        }
    }
}

pub async fn whoami(ctx: &Ctx) -> Result<(), CliError> {
    let client = ctx.client()?;
    let w = client.get("/v1/whoami").await?;
    ctx.out.object(&w, WHOAMI_FIELDS, "key_id")
}

/// What a delete without a body prints.
fn done(ctx: &Ctx, id: &str, line: &str) -> Result<(), CliError> {
    if ctx.out.structured() {
        ctx.out.data(&json!({ "deleted": id }))
    } else if ctx.out.quiet {
        println!("{id}");
        Ok(())
    } else {
        println!("{line}");
        Ok(())
    }
}
