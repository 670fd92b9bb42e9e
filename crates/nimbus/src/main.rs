//! `nimbus`: one binary for the control plane (`nimbus server`) and its command-line client.

use clap::{CommandFactory, Parser, Subcommand};

mod admin;
mod cli;
mod server;

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
    /// Run the control plane: the API, the operation workers and the driver.
    Server(server::ServerArgs),
    /// Print the native API's OpenAPI document.
    Openapi,
    /// Back up the store while the server runs: a consistent copy of its SQLite database.
    Backup(admin::BackupArgs),
    /// Put a backup in place as a data dir's store (no server may run there).
    Restore(admin::RestoreArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    match args.command {
        Command::Server(args) => server::run(args),
        Command::Openapi => {
            print!("{}", nimbus_api::openapi::document_json());
            std::process::ExitCode::SUCCESS
        }
        Command::Backup(args) => admin::backup(args),
        Command::Restore(args) => admin::restore(args),
        Command::Client(command) => cli::run(args.global, command, Cli::command),
    }
}
