//! `nimbus config ...`: named connection profiles in the user's config file.

use clap::Subcommand;
use serde_json::json;

use crate::cli::client::CliError;
use crate::cli::config::{config_path, load, save, Profile};
use crate::cli::output::table;
use crate::cli::Ctx;

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Add (or replace) a profile from --url and --token.
    #[command(after_help = "Example:\n  nimbus config add local --url http://127.0.0.1:8700 --token $SECRET --use")]
    Add {
        name: String,
        /// Make it the current profile.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Make a profile the current one.
    #[command(after_help = "Example:\n  nimbus config use local")]
    Use { name: String },
    /// List profiles; `*` marks the current one.
    #[command(visible_alias = "ls", after_help = "Example:\n  nimbus config list")]
    List,
    /// Remove a profile.
    #[command(visible_alias = "rm", after_help = "Example:\n  nimbus config remove old")]
    Remove { name: String },
}

pub fn run(ctx: &Ctx, cmd: ConfigCmd) -> Result<(), CliError> {
    let path = config_path(ctx.config_path.as_deref())?;
    let mut file = load(&path)?;
    match cmd {
        ConfigCmd::Add { name, make_current } => {
            // --url and --token are the global connection flags, read here as the profile's values.
            let (Some(url), Some(token)) = (ctx.global.url.clone(), ctx.global.token.clone()) else {
                return Err(CliError::Usage("config add needs --url URL and --token TOKEN".into()));
            };
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(CliError::Usage(format!("the URL {url:?} must start with http:// or https://")));
            }
            file.profiles.insert(name.clone(), Profile { url: url.trim_end_matches('/').to_string(), token });
            if make_current || file.current.is_none() {
                file.current = Some(name.clone());
            }
            save(&path, &file)?;
            ctx.out.note(&format!("saved profile {name} in {}", path.display()));
            Ok(())
        }
        ConfigCmd::Use { name } => {
            if !file.profiles.contains_key(&name) {
                return Err(CliError::NotFound(format!("no profile {name:?} in {}", path.display())));
            }
            file.current = Some(name.clone());
            save(&path, &file)?;
            ctx.out.note(&format!("now using profile {name}"));
            Ok(())
        }
        ConfigCmd::Remove { name } => {
            if file.profiles.remove(&name).is_none() {
                return Err(CliError::NotFound(format!("no profile {name:?} in {}", path.display())));
            }
            if file.current.as_deref() == Some(&name) {
                file.current = None;
            }
            save(&path, &file)?;
            ctx.out.note(&format!("removed profile {name}"));
            Ok(())
        }
        ConfigCmd::List => {
            // Tokens are secrets: never printed, whatever the format.
            let items: Vec<serde_json::Value> = file
                .profiles
                .iter()
                .map(
                    |(name, p)| json!({ "name": name, "url": p.url, "current": file.current.as_deref() == Some(name) }),
                )
                .collect();
            if ctx.out.structured() {
                return ctx.out.data(&serde_json::Value::Array(items));
            }
            if ctx.out.quiet {
                file.profiles.keys().for_each(|n| println!("{n}"));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = file
                .profiles
                .iter()
                .map(|(name, p)| {
                    let mark = if file.current.as_deref() == Some(name) { "*" } else { "" };
                    vec![mark.to_string(), name.clone(), p.url.clone()]
                })
                .collect();
            print!("{}", table(&["CURRENT".into(), "NAME".into(), "URL".into()], &rows));
            Ok(())
        }
    }
}
