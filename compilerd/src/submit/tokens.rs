//! `discomy tokens`: tenant tokens of the coordinator's build queue, for the people and CI jobs
//! that submit builds (create, list, revoke), through [`ApiClient`] with the farm token or a
//! tenant token with the `admin` scope. A token's text is printed once, when it is created; the
//! coordinator keeps only its hash.

use std::fmt::Write as _;
use std::path::PathBuf;

use discomy_protocol::ops::{TokenCreateRequest, TokenInfo, TokenScope};
use discomy_protocol::plumbing::secret::{self, SecretError};

use crate::coord::api::{ApiClient, ApiClientError};

/// Why a `discomy tokens` command failed.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The coordinator refused or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiClientError),
    /// The token file could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The arguments do not make a request.
    #[error("{0}")]
    Input(String),
}

/// `discomy tokens …`.
#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    /// The coordinator's API (`http://HOST:PORT`, or `https://` for a working fleet's).
    #[arg(long, global = true, env = "DISCOMY_API", default_value = "http://127.0.0.1:3635")]
    pub api: String,
    /// The farm CA that verifies an `https://` API (otherwise `--fleet-dir`'s `ca.pem`).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A fleet directory: its `ca.pem` verifies an `https://` API, and this host's certificate
    /// in it (`node.pem`, else `admin.pem`) is shown.
    #[arg(long, global = true, env = "DISCOMY_FLEET_DIR", value_name = "DIR")]
    pub fleet_dir: Option<PathBuf>,
    /// A file holding the farm token or an admin tenant token (otherwise `DISCOMY_TOKEN`; never
    /// on the command line).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: TokensCmd,
}

/// The commands.
#[derive(Debug, clap::Subcommand)]
pub enum TokensCmd {
    /// Create a token and print it (the only time it is shown).
    Create {
        /// Who or what holds it (`ci-lua`, `alice`; at most 64 bytes).
        name: String,
        /// Its scopes, comma-separated: submit (submit builds, read), admin (cancel, retry,
        /// priority, tokens), compile (the compile farm; not used by the API yet).
        #[arg(long, value_name = "SCOPES", required = true)]
        scope: String,
        /// Seconds until it expires (default: never).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        /// Print JSON (the token and its record).
        #[arg(long)]
        json: bool,
    },
    /// Every token, revoked and expired ones too (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: refused from its next request on.
    Revoke {
        /// The token's id (the `ID` of `dsc_ID_…`, as `list` shows it).
        id: u64,
    },
}

impl TokensArgs {
    /// Runs the command; what to print.
    pub fn run(self) -> Result<String, TokensError> {
        let env = std::env::var("DISCOMY_TOKEN").ok().filter(|t| !t.is_empty());
        let (token, _) = secret::token(env, self.token_file.as_deref())?;
        let api =
            ApiClient::from_args(&self.api, token, self.ca.as_deref(), self.fleet_dir.as_deref())?;
        match self.command {
            TokensCmd::Create { name, scope, ttl, json } => {
                let scopes = TokenScope::parse_list(&scope).map_err(TokensError::Input)?;
                let req = TokenCreateRequest { name, scopes, ttl_secs: ttl };
                req.check().map_err(TokensError::Input)?;
                let made = api.create_token(&req)?;
                if json {
                    return Ok(to_json(&made));
                }
                Ok(format!(
                    "{}\n# token {} ({}, {}), {}: shown this once, keep it secret\n",
                    made.token,
                    made.info.id,
                    made.info.name,
                    TokenScope::join(&made.info.scopes),
                    expiry(&made.info, now()),
                ))
            }
            TokensCmd::List { json } => {
                let tokens = api.list_tokens()?;
                Ok(if json { to_json(&tokens) } else { render_list(&tokens, now()) })
            }
            TokensCmd::Revoke { id } => {
                let info = api.revoke_token(id)?;
                Ok(format!("token {id} ({}): revoked\n", info.name))
            }
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).map(|s| s + "\n").unwrap_or_default()
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `3d`, `5h`, `12m`, `40s`: a span, rounded down to its largest unit.
fn span(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn expiry(t: &TokenInfo, now: f64) -> String {
    match t.expires_at {
        None => "never expires".into(),
        Some(at) if at > now => format!("expires in {}", span(at - now)),
        Some(at) => format!("expired {} ago", span(now - at)),
    }
}

/// `discomy tokens list`: one line per token.
pub fn render_list(tokens: &[TokenInfo], now: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<24} {:<20} {:<8} {:<10} {:<20} LAST USED",
        "ID", "NAME", "SCOPES", "STATE", "CREATED", "EXPIRES"
    );
    for t in tokens {
        let state = match (t.revoked_at, t.is_live(now)) {
            (Some(_), _) => "revoked",
            (None, false) => "expired",
            (None, true) => "live",
        };
        let used = t.last_used_at.map_or_else(|| "never".into(), |at| span(now - at) + " ago");
        let _ = writeln!(
            out,
            "{:>6}  {:<24} {:<20} {:<8} {:<10} {:<20} {used}",
            t.id,
            t.name,
            TokenScope::join(&t.scopes),
            state,
            span(now - t.created_at) + " ago",
            expiry(t, now),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: TokensArgs,
    }

    #[test]
    fn arguments_parse() {
        let cli = Cli::try_parse_from([
            "discomy",
            "--api",
            "http://h:1",
            "create",
            "ci-lua",
            "--scope",
            "submit,admin",
            "--ttl",
            "60",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.args.api, "http://h:1");
        assert!(matches!(
            cli.args.command,
            TokensCmd::Create { ref name, ref scope, ttl: Some(60), json: true }
                if name == "ci-lua" && scope == "submit,admin"
        ));
        assert!(Cli::try_parse_from(["discomy", "create", "x"]).is_err(), "--scope is required");
        let cli = Cli::try_parse_from(["discomy", "revoke", "7", "--token-file", "/t"]).unwrap();
        assert!(matches!(cli.args.command, TokensCmd::Revoke { id: 7 }));
    }

    #[test]
    fn lists_say_state_and_ages() {
        let t = |id, revoked_at, expires_at| TokenInfo {
            id,
            name: format!("t{id}"),
            scopes: vec![TokenScope::Submit, TokenScope::Admin],
            created_at: 1000.0,
            expires_at,
            revoked_at,
            last_used_at: Some(9000.0),
        };
        let out = render_list(
            &[t(1, None, None), t(2, Some(5.0), None), t(3, None, Some(2.0))],
            10_000.0,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].contains("submit,admin") && lines[1].contains("live"), "{out}");
        assert!(lines[1].contains("2h ago") && lines[1].contains("16m ago"), "{out}");
        assert!(lines[2].contains("revoked") && lines[3].contains("expired 2h ago"), "{out}");
    }
}
