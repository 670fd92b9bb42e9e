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
    /// Import a disk image (qcow2 or raw) from a file on the server's host or an http(s) URL, and wait.
    #[command(after_help = "Examples:\n  nimbus template import my-image /srv/images/disk.qcow2\n  \
        nimbus template import bookworm http://images.example/debian-12-genericcloud-amd64.qcow2 \\\n      \
        --checksum sha256:... --default-user debian")]
    Import {
        name: String,
        /// A file (made absolute; the server reads it, so it must be on the server's host) or an http(s) URL.
        #[arg(value_name = "FILE|URL", required_unless_present = "source")]
        image: Option<String>,
        /// The image's sha256: the import fails unless the file has it.
        #[arg(long, value_name = "sha256:HEX")]
        checksum: Option<String>,
        /// The image boots with UEFI (default: BIOS).
        #[arg(long)]
        uefi: bool,
        /// The user cloud-init gives SSH keys to (`debian`, `ubuntu`...).
        #[arg(long)]
        default_user: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "")]
        os_name: String,
        #[arg(long, default_value = "")]
        os_version: String,
        /// Visible to every project (needs an admin key).
        #[arg(long)]
        public: bool,
        /// Instead of an image: register a template directory on the server's host, as guest/ builds them.
        #[arg(long, value_name = "DIR", conflicts_with = "image")]
        source: Option<String>,
        #[command(flatten)]
        wait: super::WaitArgs,
    },
    /// Build a stock template (busybox, debian-12) from Debian's packages into the template dir of this
    /// host, where servers find it (as root: debian-12 uses debootstrap).
    #[command(after_help = "Example:\n  nimbus template build debian-12")]
    Build {
        name: String,
        /// Default: the servers' default template dir.
        #[arg(long, env = "NIMBUS_TEMPLATE_DIR", value_name = "DIR")]
        template_dir: Option<std::path::PathBuf>,
        /// Keep debian-12's downloaded root filesystem here for the next build.
        #[arg(long, value_name = "DIR")]
        cache: Option<std::path::PathBuf>,
    },
    /// Delete a template (an imported one's files go too, unless an instance still boots from them).
    #[command(visible_alias = "rm", after_help = "Example:\n  nimbus template delete my-image")]
    Delete { template: String },
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
    if let TemplateCmd::Build { name, template_dir, cache } = &cmd {
        let dir = template_dir.clone().unwrap_or_else(crate::guest::default_template_dir);
        let (name, cache) = (name.clone(), cache.clone());
        let started = std::time::Instant::now();
        let dir2 = dir.clone();
        tokio::task::spawn_blocking(move || crate::guest::build(&name, &dir2, cache.as_deref()))
            .await
            .map_err(|e| CliError::Other(e.to_string()))?
            .map_err(|e| CliError::Other(format!("the build failed:\n{e}")))?;
        if !ctx.out.quiet {
            eprintln!("built in {:.0}s into {}", started.elapsed().as_secs_f64(), dir.display());
        }
        return Ok(());
    }
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
            image,
            checksum,
            uefi,
            default_user,
            description,
            os_name,
            os_version,
            public,
            source,
            wait,
        } => {
            let mut body = json!({"name": name, "description": description, "os_name": os_name,
                "os_version": os_version, "default_user": default_user, "public": public, "checksum": checksum});
            if let Some(source) = source {
                body["source"] = json!(source);
                let t = client.post("/v1/templates", Some(&body)).await?.body;
                return ctx.out.object(&t, TEMPLATE_FIELDS, "id");
            }
            let image = image.unwrap_or_default();
            if image.starts_with("http://") || image.starts_with("https://") {
                body["url"] = json!(image);
            } else {
                let path = std::path::absolute(&image).map_err(|e| CliError::Usage(format!("{image}: {e}")))?;
                body["path"] = json!(path);
            }
            body["boot_mode"] = json!(if uefi { "uefi" } else { "bios" });
            let reply = client.post("/v1/templates", Some(&body)).await?;
            if let Some(op) = super::follow_operation(ctx, &client, reply, &wait).await? {
                let id = op["result"]["template_id"].as_str().unwrap_or_default().to_string();
                let t = client.get(&format!("/v1/templates/{}", encode(&id))).await?;
                ctx.out.object(&t, TEMPLATE_FIELDS, "id")?;
            }
            Ok(())
        }
        TemplateCmd::Build { .. } => unreachable!("built locally before a client exists"),
        TemplateCmd::Delete { template } => {
            client.delete(&format!("/v1/templates/{}", encode(&template))).await?;
            if !ctx.out.quiet {
                println!("deleted template {template}");
            }
            Ok(())
        }
    }
}
