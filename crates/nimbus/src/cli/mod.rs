//! The command-line client: its arguments, and the dispatch from a parsed command to the code that runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

pub mod client;
pub mod commands;
pub mod config;
pub mod output;
pub mod wait;

use client::{CliError, Client};
use output::Output;

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Flags every client command takes; they sit on the top-level parser so they may come before or after the
/// subcommand.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// API URL (overrides NIMBUS_URL and the profile).
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API token, the secret of an API key (overrides NIMBUS_TOKEN and the profile).
    #[arg(long, global = true, value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Use this profile from the config file instead of the current one.
    #[arg(long, global = true, env = "NIMBUS_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value = "table")]
    pub output: Format,
    /// Print only ids.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Show the HTTP exchange on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Trust this PEM CA certificate for an https:// API URL (a server run with --tls-cert).
    #[arg(long, global = true, env = "NIMBUS_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// The client's subcommands, flattened into the binary's top-level command list.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create, inspect and drive instances.
    #[command(
        subcommand,
        after_help = "Example:\n  nimbus instance create web --type standard.small --template busybox"
    )]
    Instance(commands::instance::InstanceCmd),
    /// Instance disk snapshots.
    #[command(subcommand, after_help = "Example:\n  nimbus snapshot list --instance web")]
    Snapshot(commands::snapshot::SnapshotCmd),
    /// Volumes: disks of their own, attached to instances and moved between them.
    #[command(subcommand, after_help = "Example:\n  nimbus volume create data --size 10")]
    Volume(commands::volume::VolumeCmd),
    /// Operations: the record of every mutating call.
    #[command(subcommand, after_help = "Example:\n  nimbus operation wait 0190c5e2-...")]
    Operation(commands::operation::OperationCmd),
    /// Instance types (sizes).
    #[command(subcommand, after_help = "Example:\n  nimbus type list")]
    Type(commands::catalog::TypeCmd),
    /// Templates (images).
    #[command(subcommand, after_help = "Example:\n  nimbus template list")]
    Template(commands::catalog::TemplateCmd),
    /// SSH public keys to put into instances.
    #[command(subcommand, after_help = "Example:\n  nimbus ssh-key add laptop --file ~/.ssh/id_ed25519.pub")]
    SshKey(commands::access::SshKeyCmd),
    /// API keys of the current project.
    #[command(subcommand, after_help = "Example:\n  nimbus api-key create ci --role member")]
    ApiKey(commands::access::ApiKeyCmd),
    /// Projects and their quotas.
    #[command(subcommand, after_help = "Example:\n  nimbus project list")]
    Project(commands::access::ProjectCmd),
    /// Hosts and their agents' tokens (operators).
    #[command(
        subcommand,
        after_help = "Examples:
  nimbus host list
  nimbus host token create node-2"
    )]
    Host(commands::host::HostCmd),
    /// Show who the token belongs to: key, role, project, organization, zone.
    #[command(after_help = "Example:\n  nimbus whoami -o json")]
    Whoami,
    /// Follow the event stream, one line per event (Ctrl-C to stop).
    #[command(after_help = "Examples:\n  nimbus events\n  nimbus events --after 0   # replay from the beginning")]
    Events(commands::events::EventsArgs),
    /// Connection profiles in the config file.
    #[command(
        subcommand,
        after_help = "Example:\n  nimbus config add local --url http://127.0.0.1:8700 --token $SECRET --use"
    )]
    Config(commands::config::ConfigCmd),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  nimbus completion bash > ~/.local/share/bash-completion/completions/nimbus")]
    Completion(CompletionArgs),
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// What every command gets: the way to talk to the server and the way to print.
pub struct Ctx {
    pub global: GlobalArgs,
    pub out: Output,
    config_path: Option<PathBuf>,
}

impl Ctx {
    /// The client is built on first use so that `config` and `completion` work without a server.
    pub fn client(&self) -> Result<Client, CliError> {
        let conn = config::resolve(&self.global, self.config_path.as_deref())?;
        Client::new(conn, self.global.verbose, self.global.ca_file.as_deref())
    }
}

/// Runs one client command and turns its outcome into the process's exit code.
pub fn run(global: GlobalArgs, command: ClientCommand, app: fn() -> clap::Command) -> ExitCode {
    // Like any Unix filter, end quietly when the reader of stdout goes away (`nimbus instance list | head`)
    // instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let ClientCommand::Completion(args) = &command {
        let mut app = app();
        clap_complete::generate(args.shell, &mut app, "nimbus", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let out = Output::new(global.output, global.quiet);
    let ctx = Ctx { global, out, config_path: config::path_override() };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(&ctx, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            ExitCode::from(e.exit_code())
        }
    }
}

async fn dispatch(ctx: &Ctx, command: ClientCommand) -> Result<(), CliError> {
    match command {
        ClientCommand::Instance(c) => commands::instance::run(ctx, c).await,
        ClientCommand::Snapshot(c) => commands::snapshot::run(ctx, c).await,
        ClientCommand::Volume(c) => commands::volume::run(ctx, c).await,
        ClientCommand::Operation(c) => commands::operation::run(ctx, c).await,
        ClientCommand::Type(c) => commands::catalog::run_type(ctx, c).await,
        ClientCommand::Template(c) => commands::catalog::run_template(ctx, c).await,
        ClientCommand::SshKey(c) => commands::access::run_ssh_key(ctx, c).await,
        ClientCommand::ApiKey(c) => commands::access::run_api_key(ctx, c).await,
        ClientCommand::Project(c) => commands::access::run_project(ctx, c).await,
        ClientCommand::Whoami => commands::access::whoami(ctx).await,
        ClientCommand::Host(c) => commands::host::run(ctx, c).await,
        ClientCommand::Events(a) => commands::events::run(ctx, a).await,
        ClientCommand::Config(c) => commands::config::run(ctx, c),
        ClientCommand::Completion(_) => Ok(()),
    }
}
