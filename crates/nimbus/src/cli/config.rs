//! Where the client connects: flags, then `NIMBUS_URL`/`NIMBUS_TOKEN`, then the profile in the config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::client::CliError;
use super::GlobalArgs;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8700";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub url: String,
    pub token: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// The resolved connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub url: String,
    pub token: Option<String>,
}

/// `NIMBUS_CONFIG` points somewhere else than the user's config dir (tests, several setups side by side).
pub fn path_override() -> Option<PathBuf> {
    std::env::var_os("NIMBUS_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

pub fn config_path(over: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(p) = over {
        return Ok(p.to_path_buf());
    }
    dirs::config_dir()
        .map(|d| d.join("nimbus").join("config.yaml"))
        .ok_or_else(|| CliError::Other("cannot find the user's config directory; set NIMBUS_CONFIG".into()))
}

pub fn load(path: &Path) -> Result<ConfigFile, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(ConfigFile::default()),
        Ok(text) => serde_yaml::from_str(&text)
            .map_err(|e| CliError::Other(format!("cannot read the config file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(CliError::Other(format!("cannot read the config file {}: {e}", path.display()))),
    }
}

pub fn save(path: &Path, config: &ConfigFile) -> Result<(), CliError> {
    let fail = |e: &dyn std::fmt::Display| CliError::Other(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    }
    let text = serde_yaml::to_string(config).map_err(|e| fail(&e))?;
    // Written aside then renamed so that a crash never leaves half a file; 0600 because it holds secrets.
    let tmp = path.with_extension("yaml.tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(|e| fail(&e))?;
        f.write_all(text.as_bytes()).map_err(|e| fail(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| fail(&e))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn resolve(global: &GlobalArgs, over: Option<&Path>) -> Result<Connection, CliError> {
    let path = config_path(over)?;
    let file = load(&path)?;
    let profile = match &global.profile {
        Some(name) => Some(file.profiles.get(name).cloned().ok_or_else(|| {
            CliError::Usage(format!("no profile {name:?} in {}; see `nimbus config list`", path.display()))
        })?),
        None => file.current.as_ref().and_then(|name| file.profiles.get(name).cloned()),
    };
    let url = global
        .url
        .clone()
        .or_else(|| env("NIMBUS_URL"))
        .or_else(|| profile.as_ref().map(|p| p.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    // The native API authenticates with the key's secret; NIMBUS_SECRET is accepted for NIMBUS_KEY users.
    let token = global
        .token
        .clone()
        .or_else(|| env("NIMBUS_TOKEN"))
        .or_else(|| env("NIMBUS_SECRET"))
        .or_else(|| profile.as_ref().map(|p| p.token.clone()).filter(|t| !t.is_empty()));
    Ok(Connection { url: url.trim_end_matches('/').to_string(), token })
}
