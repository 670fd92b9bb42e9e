//! `nimbus`: one binary for the control plane (`nimbus server`) and its command-line client.

use clap::{CommandFactory, Parser, Subcommand};

mod cli;
mod guest;
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
        Command::Client(command) => cli::run(args.global, command, Cli::command),
    }
}
