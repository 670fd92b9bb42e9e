//! `nimbus`: one binary for the control plane (`nimbus server`) and its command-line client.

use clap::{Parser, Subcommand};

mod server;

#[derive(Parser)]
#[command(name = "nimbus", version, about = "A self-hosted compute cloud: real VMs behind a cloud API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the API, the operation workers and the driver.
    Server(server::ServerArgs),
    /// Print the native API's OpenAPI document.
    Openapi,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => server::run(args),
        Command::Openapi => {
            print!("{}", nimbus_api::openapi::document_json());
            std::process::ExitCode::SUCCESS
        }
    }
}
