//! The farm token, read once for every binary: from a file (`--token-file`, a config's
//! `token_file`) or the environment (`DISCOMY_TOKEN`). A token given as a command-line flag still
//! works (older scripts), but the caller is told, so it can warn: every user of the host can read
//! a process's arguments in `ps`.

use std::path::Path;

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No token.
    None,
    /// A file.
    File,
    /// `DISCOMY_TOKEN`.
    Environment,
    /// A command-line flag: readable by everyone on the host.
    CommandLine,
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// It could not be read.
    #[error("token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It holds no token.
    #[error("token file {0} is empty")]
    Empty(String),
}

/// Reads a token file: its first line, trimmed.
pub fn read_token_file(path: &Path) -> Result<String, SecretError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| SecretError::Read { path: shown.clone(), source })?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(SecretError::Empty(shown));
    }
    Ok(token.to_owned())
}

/// The token: `file` first, else `value` (a clap argument that also reads `DISCOMY_TOKEN`),
/// with where it came from.
pub fn token(
    value: Option<String>,
    file: Option<&Path>,
) -> Result<(Option<String>, Source), SecretError> {
    if let Some(file) = file {
        return Ok((Some(read_token_file(file)?), Source::File));
    }
    let Some(value) = value else { return Ok((None, Source::None)) };
    let from_env = std::env::var("DISCOMY_TOKEN").is_ok_and(|env| env == value);
    Ok((Some(value), if from_env { Source::Environment } else { Source::CommandLine }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn files_come_first_and_empty_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let (token, source) = token(Some("flag".into()), Some(&file)).unwrap();
        assert_eq!((token.as_deref(), source), (Some("s3cret"), Source::File));
        std::fs::write(&file, "  \n").unwrap();
        assert!(matches!(read_token_file(&file), Err(SecretError::Empty(_))));
        assert_eq!(super::token(None, None).unwrap(), (None, Source::None));
    }
}
