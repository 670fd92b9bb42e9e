//! `nimbus`: one binary for the control plane (`nimbus server`) and its command-line client.

use clap::{CommandFactory, Parser, Subcommand};

mod agent;
mod cli;
mod host;
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
    /// Run the control plane: the API, the operation workers and (unless --no-local-agent) the server's own
    /// host.
    Server(server::ServerArgs),
    /// Run a host's agent: register the host with the control plane at --server, heartbeat, and run the
    /// driver steps of the instances placed on it.
    Agent(agent::AgentArgs),
    /// Print the native API's OpenAPI document.
    Openapi,
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    match args.command {
        Command::Server(args) => server::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Openapi => {
            print!("{}", nimbus_api::openapi::document_json());
            std::process::ExitCode::SUCCESS
        }
        Command::Client(command) => cli::run(args.global, command, Cli::command),
    }
}
