//! `nimbus`: one binary for the control plane (`nimbus server`) and its command-line client.

use clap::{CommandFactory, Parser, Subcommand};

mod admin;
mod agent;
mod cli;
mod guest;
mod host;
mod listen;
mod server;
mod websocket;

#[derive(Parser)]
#[command(name = "nimbus", version, about = "A self-hosted compute cloud: real VMs behind a cloud API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: cli::GlobalArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the API, the operation workers and (unless --no-local-agent) the server's own
    /// host.
    Server(Box<server::ServerArgs>),
    /// Run a host's agent: register the host with the control plane at --server, heartbeat, and run the
    /// driver steps of the instances placed on it.
    Agent(agent::AgentArgs),
    /// Print the native API's OpenAPI document.
    Openapi,
    /// Back up the store while the server runs: a consistent copy of its SQLite database.
    Backup(admin::BackupArgs),
    /// Put a backup in place as a data dir's store (no server may run there).
    Restore(admin::RestoreArgs),
    /// The seal key ring that seals secrets at rest (docs/SECURITY.md).
    #[command(subcommand)]
    SealKey(admin::SealKeyCommand),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// Runs a long-lived process (`server`, `agent`): logs to stderr (`NIMBUS_LOG` filters), a multi-threaded
/// runtime, and the exit code of `body`, whose error is printed after `what`.
fn daemon<F: std::future::Future<Output = anyhow::Result<()>>>(
    what: &str,
    log_default: &str,
    body: F,
) -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG").unwrap_or_else(|_| log_default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(body) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// mimalloc rather than glibc's malloc: the control plane allocates many small, short-lived values (JSON,
/// rows, strings) on one thread and frees them on another, where glibc's arenas took about a fifth of the
/// server's CPU under the creation benchmark (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    match args.command {
        Command::Server(args) => daemon("nimbus server", "info,sqlx=warn,tower_http=warn", server::serve(*args)),
        Command::Agent(args) => daemon("nimbus agent", "info,reqwest=warn", agent::serve(args)),
        Command::Openapi => {
            print!("{}", nimbus_api::openapi::document_json());
            std::process::ExitCode::SUCCESS
        }
        Command::Backup(args) => admin::backup(args),
        Command::Restore(args) => admin::restore(args),
        Command::SealKey(command) => admin::seal_key(command),
        Command::Client(command) => cli::run(args.global, command, Cli::command),
    }
}
