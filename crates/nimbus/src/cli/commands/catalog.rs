//! `nimbus type ...` and `nimbus template ...`: what instances are made of.

use clap::Subcommand;
use serde_json::json;

use crate::cli::client::{encode, CliError};
use crate::cli::output::Column;
use crate::cli::Ctx;

const TYPE_COLUMNS: &[Column] = &[
    ("NAME", "name"),
    ("FAMILY", "family"),
    ("VCPUS", "vcpus"),
    ("MEMORY_MIB", "memory_mib"),
    ("GPUS", "gpus"),
    ("DISK_GB", "default_disk_gb"),
    ("PRICE_HOURLY", "price_hourly"),
    ("AUTHORIZED", "authorized"),
];

const TEMPLATE_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("OS", "os_name"),
    ("VERSION", "os_version"),
    ("BOOT", "boot_mode"),
    ("MIN_DISK_GB", "min_disk_gb"),
    ("VISIBILITY", "visibility"),
];

const TEMPLATE_FIELDS: &[Column] = &[
    ("id", "id"),
    ("name", "name"),
    ("description", "description"),
    ("os_name", "os_name"),
    ("os_version", "os_version"),
    ("boot_mode", "boot_mode"),
    ("min_disk_gb", "min_disk_gb"),
    ("min_memory_mib", "min_memory_mib"),
    ("password_enabled", "password_enabled"),
    ("ssh_key_enabled", "ssh_key_enabled"),
    ("default_user", "default_user"),
    ("visibility", "visibility"),
    ("source", "source"),
    ("checksum", "checksum"),
    ("size_bytes", "size_bytes"),
    ("created_at", "created_at"),
];

#[derive(Subcommand, Debug)]
pub enum TypeCmd {
    /// List instance types.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus type list")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum TemplateCmd {
    /// List templates.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus template list")]
    List,
    /// Show one template.
    #[command(after_help = "Example:\n  nimbus template show busybox")]
    Show { template: String },
    /// Register a template from a directory on the server (as built by guest/build.sh).
    #[command(after_help = "Example:\n  nimbus template import my-busybox --source /var/lib/nimbus/templates/busybox")]
    Import {
        name: String,
        /// Directory with the template's files, on the server's host.
        #[arg(long, value_name = "DIR")]
        source: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "")]
        os_name: String,
        #[arg(long, default_value = "")]
        os_version: String,
        #[arg(long, value_name = "GB")]
        min_disk: Option<u64>,
        #[arg(long)]
        password_enabled: bool,
        #[arg(long)]
        ssh_key_enabled: bool,
        #[arg(long)]
        default_user: Option<String>,
        /// Visible to every project (needs an admin key).
        #[arg(long)]
        public: bool,
        #[arg(long)]
        checksum: Option<String>,
    },
}

pub async fn run_type(ctx: &Ctx, cmd: TypeCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        TypeCmd::List => {
            let items = client.list_all("/v1/instance-types", &[], None).await?;
            ctx.out.list(&items, TYPE_COLUMNS, "name")
        }
    }
}

pub async fn run_template(ctx: &Ctx, cmd: TemplateCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        TemplateCmd::List => {
            let items = client.list_all("/v1/templates", &[], None).await?;
            ctx.out.list(&items, TEMPLATE_COLUMNS, "id")
        }
        TemplateCmd::Show { template } => {
            let t = client.get(&format!("/v1/templates/{}", encode(&template))).await?;
            ctx.out.object(&t, TEMPLATE_FIELDS, "id")
        }
        TemplateCmd::Import {
            name,
            source,
            description,
            os_name,
            os_version,
            min_disk,
            password_enabled,
            ssh_key_enabled,
            default_user,
            public,
            checksum,
        } => {
            let body = json!({
                "name": name,
                "source": source,
                "description": description,
                "os_name": os_name,
                "os_version": os_version,
                "min_disk_gb": min_disk,
                "password_enabled": password_enabled,
                "ssh_key_enabled": ssh_key_enabled,
                "default_user": default_user,
                "public": public,
                "checksum": checksum,
            });
            let t = client.post("/v1/templates", Some(&body)).await?.body;
            ctx.out.object(&t, TEMPLATE_FIELDS, "id")
        }
    }
}
