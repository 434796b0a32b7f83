//! config_manager: the coordinator's configuration file (TOML), read and checked once at start
//! with errors that name the file, the line and the setting. Secrets come from files
//! (`token_file`) or the environment (`DISCOMY_TOKEN`), never from the command line.
//!
//! ```toml
//! token_file = "/etc/discomy/token"
//!
//! [ops]
//! api_listen = "0.0.0.0:3635"
//! state_dir = "/var/lib/discomy/coordinator"
//! max_upload_bytes = 4294967296
//! # Several coordinators sharing one queue: PostgreSQL (absent: SQLite in state_dir), the
//! # password in a file or PGPASSWORD, never in the URL. state_dir must then be shared storage.
//! # database = "postgres://discomy@db.example/discomy"
//! # database_password_file = "/etc/discomy/db-password"
//! # Forges over https are verified against the system's roots; a forge under a private CA:
//! # forge_ca_file = "/etc/discomy/forge-ca.pem"
//!
//! [ops.queue]
//! default_timeout_secs = 14400
//! max_infra_failures = 3
//! lease_secs = 30.0
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ops::OpsConfig;
use crate::ops::ci_notify::forge_tls::read_ca_file;

/// What can be wrong with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or names an unknown setting (the message has the line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's explanation, with line and column.
        message: String,
    },
    /// A setting has a value that cannot work.
    #[error("{path}: {setting}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The setting.
        setting: &'static str,
        /// Why.
        message: String,
    },
}

/// The coordinator's configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorFile {
    /// A file holding the farm token (one line).
    pub token_file: Option<PathBuf>,
    /// The build queue and its API.
    pub ops: OpsConfig,
}

impl CoordinatorFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<CoordinatorFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let file: CoordinatorFile = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        file.ops.queue.validate().map_err(|message| ConfigError::Invalid {
            path: path.into(),
            setting: "ops.queue",
            message,
        })?;
        // The address parses, holds no password, and the password file (if any) is readable.
        file.ops.database_password().map_err(|e| ConfigError::Invalid {
            path: path.into(),
            setting: "ops.database",
            message: e.to_string(),
        })?;
        // The forges' private CA, if any: readable, with a certificate in it.
        if let Some(ca) = &file.ops.forge_ca_file {
            read_ca_file(ca).map_err(|e| ConfigError::Invalid {
                path: path.into(),
                setting: "ops.forge_ca_file",
                message: e.to_string(),
            })?;
        }
        Ok(file)
    }

    /// The token from `token_file`, if one is named.
    pub fn token(&self, path: &Path) -> Result<Option<String>, ConfigError> {
        let Some(file) = &self.token_file else { return Ok(None) };
        discomy_protocol::plumbing::secret::read_token_file(file).map(Some).map_err(|e| {
            ConfigError::Invalid {
                path: path.into(),
                setting: "token_file",
                message: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(text: &str) -> Result<CoordinatorFile, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text).unwrap();
        CoordinatorFile::load(&path)
    }

    #[test]
    fn settings_are_checked_with_their_line() {
        let file =
            load("[ops]\napi_listen = \"127.0.0.1:0\"\n[ops.queue]\nlease_secs = 60.0\n").unwrap();
        assert_eq!(file.ops.queue.lease_secs, 60.0);
        assert!(file.ops.api_listen.is_some());
        let err = load("[ops]\napi_listn = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("api_listn") && err.contains("line 2"), "{err}");
        let err = load("[ops.queue]\nlease_secs = 1.0\n").unwrap_err().to_string();
        assert!(err.contains("ops.queue") && err.contains("lease_secs"), "{err}");
    }

    #[test]
    fn the_database_is_checked_and_never_holds_a_password() {
        assert!(load("[ops]\n").unwrap().ops.database.is_none(), "SQLite by default");
        for good in [
            "postgres://discomy@db.example/discomy",
            "host=/run/postgresql user=discomy dbname=discomy",
        ] {
            let file = load(&format!("[ops]\ndatabase = \"{good}\"\n")).unwrap();
            assert_eq!(file.ops.database.as_deref(), Some(good));
        }
        let err = load("[ops]\ndatabase = \"postgres://u:hunter2@h/db\"\n").unwrap_err();
        let err = err.to_string();
        assert!(err.contains("ops.database") && err.contains("password"), "{err}");
        assert!(!err.contains("hunter2"), "the password is not repeated: {err}");
        let err = load("[ops]\ndatabase = \"nonsense://x\"\n").unwrap_err().to_string();
        assert!(err.contains("ops.database"), "{err}");
        let err = load("[ops]\ndatabase = \"host=/x dbname=d\"\ndatabase_password_file = \"/nonexistent/pw\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("database_password_file") && err.contains("/nonexistent/pw"), "{err}");
        let err = load("[ops]\ndatabase_password_file = \"/x\"\n").unwrap_err().to_string();
        assert!(err.contains("without a PostgreSQL database"), "{err}");
    }

    #[test]
    fn the_forge_ca_file_is_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = discomy_protocol::tls::Ca::create("forge").unwrap();
        let good = dir.path().join("forge-ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let file = load(&format!("[ops]\nforge_ca_file = \"{}\"\n", good.display())).unwrap();
        assert_eq!(file.ops.forge_ca_file.as_deref(), Some(good.as_path()));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        for (bad, why) in [(empty, "no certificate"), (dir.path().join("absent.pem"), "No such")] {
            let err = load(&format!("[ops]\nforge_ca_file = \"{}\"\n", bad.display()));
            let err = err.unwrap_err().to_string();
            assert!(err.contains("ops.forge_ca_file") && err.contains(why), "{err}");
            assert!(err.contains(&bad.display().to_string()), "{err}");
        }
    }
}
