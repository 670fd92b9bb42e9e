//! `nimbus backup` and `nimbus restore`: the operator's commands for the store, run beside (backup) or
//! instead of (restore) a server. The store does the work (`nimbus_store::{backup_sqlite, restore_sqlite}`);
//! this is the command line around it. PostgreSQL is backed up and restored with its own tools, which these
//! commands name.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to write the backup (must not exist): a SQLite database file, complete on its own.
    file: PathBuf,
    /// The data dir of the server whose store to back up (its SQLite database is `nimbus.db` there).
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = "nimbus-data")]
    data_dir: PathBuf,
    /// The database URL, when the server was given one with `--database`.
    #[arg(long, env = "NIMBUS_DATABASE")]
    database: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A backup made by `nimbus backup`.
    file: PathBuf,
    /// The data dir to restore into (created if missing). No server may be running on it. A database
    /// already there is kept beside the restored one as `nimbus.db.before-restore-<time>`.
    #[arg(long)]
    data_dir: PathBuf,
    /// The database URL the server there is given with `--database`, if it is not the data dir's own.
    #[arg(long, env = "NIMBUS_DATABASE")]
    database: Option<String>,
}

fn database_url(data_dir: &Path, database: &Option<String>) -> String {
    database.clone().unwrap_or_else(|| format!("sqlite://{}/nimbus.db", data_dir.display()))
}

fn postgres_advice(what: &str) -> ExitCode {
    eprintln!(
        "nimbus {what}: the store is PostgreSQL: use PostgreSQL's own tools, which take a consistent copy while \
         the servers run and restore it into an empty database:\n\
         \x20 pg_dump --format=custom --file=nimbus.dump \"$NIMBUS_DATABASE\"\n\
         \x20 createdb nimbus_restored && pg_restore --dbname=postgres://USER@HOST/nimbus_restored nimbus.dump\n\
         then start the servers with --database pointing at it (docs/RELIABILITY.md, \"Backup, restore, upgrade\")."
    );
    ExitCode::from(2)
}

pub fn backup(args: BackupArgs) -> ExitCode {
    let url = database_url(&args.data_dir, &args.database);
    if url.starts_with("postgres") {
        return postgres_advice("backup");
    }
    let Some(db) = nimbus_store::sqlite_file(&url) else {
        eprintln!("nimbus backup: {url:?} is not a SQLite file or PostgreSQL URL");
        return ExitCode::FAILURE;
    };
    run("backup", async {
        anyhow::ensure!(!args.file.exists(), "{} exists; choose a new file", args.file.display());
        // Written aside and renamed into place: the file named is a complete backup or absent.
        let name = args.file.file_name().context("the backup needs a file name")?.to_string_lossy().into_owned();
        let partial = args.file.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let _ = std::fs::remove_file(&partial);
        nimbus_store::backup_sqlite(&db, &partial).await.with_context(|| format!("backing up {}", db.display()))?;
        std::fs::rename(&partial, &args.file).with_context(|| format!("writing {}", args.file.display()))?;
        let bytes = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
        println!("backed up {} to {} ({bytes} bytes)", db.display(), args.file.display());
        // The backup's secrets are sealed: without the key ring it is no use to a restore (nor to a thief).
        let ring = args.data_dir.join("seal.key");
        if ring.exists() {
            let beside = key_ring_beside(&args.file);
            copy_private(&ring, &beside)?;
            println!(
                "copied the seal key ring to {}: a restore needs it; keep it apart from the backup",
                beside.display()
            );
        }
        Ok(())
    })
}

pub fn restore(args: RestoreArgs) -> ExitCode {
    let url = database_url(&args.data_dir, &args.database);
    if url.starts_with("postgres") {
        return postgres_advice("restore");
    }
    let Some(db) = nimbus_store::sqlite_file(&url) else {
        eprintln!("nimbus restore: {url:?} is not a SQLite file or PostgreSQL URL");
        return ExitCode::FAILURE;
    };
    run("restore", async {
        std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
        // The server's own lock: held, a server runs here and would keep writing its database.
        let lock = std::fs::File::create(args.data_dir.join("server.lock"))?;
        lock.try_lock()
            .map_err(|_| anyhow::anyhow!("a nimbus server is running on {}; stop it first", args.data_dir.display()))?;
        let ring = key_ring_beside(&args.file);
        let own_ring = args.data_dir.join("seal.key");
        if ring.exists() && !own_ring.exists() {
            copy_private(&ring, &own_ring)?;
            println!("restored the seal key ring {} as {}", ring.display(), own_ring.display());
        }
        let restored = nimbus_store::restore_sqlite(&args.file, &db)
            .await
            .with_context(|| format!("restoring {}", args.file.display()))?;
        println!(
            "restored {} into {} (schema version {}, {} instances, {} operations to resume)",
            args.file.display(),
            db.display(),
            restored.schema_version,
            restored.instances,
            restored.operations_resumed
        );
        println!(
            "start the server on it: nimbus server --data-dir {}. It compares the records with the host: \
             instances the records know but the host lacks show as error; instances the host runs that the \
             backup does not know are reported by GET /v1/host and left running.",
            args.data_dir.display()
        );
        Ok(())
    })
}

/// Where `nimbus backup FILE` puts the seal key ring: `FILE.seal.key`.
fn key_ring_beside(backup: &Path) -> PathBuf {
    let mut name = backup.as_os_str().to_owned();
    name.push(".seal.key");
    PathBuf::from(name)
}

/// Copies a secret file, the copy readable by its owner only from the start.
fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let text = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("writing {}", to.display()))?;
    file.write_all(&text).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", to.display()))
}

fn run(what: &str, f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nimbus {what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The comment atop a seal key ring the server makes.
pub const SEAL_KEY_FILE_HEADER: &str =
    "# Nimbus seal key ring (docs/SECURITY.md): the first key seals, every key opens. Keep it \
                                        0600 and back it up apart from the database.";

/// A name for a new seal key: when it was made, so that a ring reads oldest last.
pub fn new_seal_key_id() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("k{}", now.as_secs())
}

#[derive(clap::Subcommand, Debug)]
pub enum SealKeyCommand {
    /// Prints a new key line (`ID BASE64KEY`). To rotate, put it first in the ring, restart the servers (each
    /// reseals what older keys sealed), then drop the old lines.
    New {
        /// The key's name (default: `k` and the time).
        #[arg(long)]
        id: Option<String>,
    },
}

pub fn seal_key(command: SealKeyCommand) -> ExitCode {
    match command {
        SealKeyCommand::New { id } => {
            let id = id.unwrap_or_else(new_seal_key_id);
            let line = nimbus_store::SealKeys::new_key_line(&id);
            if let Err(e) = nimbus_store::SealKeys::parse(&line) {
                eprintln!("nimbus seal-key new: {e}");
                return ExitCode::from(2);
            }
            println!("{line}");
            ExitCode::SUCCESS
        }
    }
}
