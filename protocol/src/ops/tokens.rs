//! Tenant tokens of the operations API: credentials for the people and CI jobs that submit
//! builds, each with its own scopes, expiry and revocation, created and listed by an admin.
//!
//! ```text
//! admin → POST   /api/v1/tokens        TokenCreateRequest ← TokenCreated (the secret, shown once)
//!       → GET    /api/v1/tokens                           ← Vec<TokenInfo> (no secrets, no hashes)
//!       → DELETE /api/v1/tokens/ID                        ← TokenInfo (revoked)
//! ```
//!
//! A token's text is `dsc_ID_SECRET` ([`TOKEN_PREFIX`], the decimal id, 32 lowercase hex digits
//! of secret); the coordinator keeps only the blake3 hash of the whole text. The farm token
//! still works beside them and holds every scope (the lab's and the bootstrap credential).

use serde::{Deserialize, Serialize};

/// The start of every tenant token's text.
pub const TOKEN_PREFIX: &str = "dsc_";
/// Hex digits of secret in a token.
pub const TOKEN_SECRET_HEX: usize = 32;
/// The longest token name, in bytes.
pub const MAX_TOKEN_NAME: usize = 64;
/// The most tokens alive at once (neither revoked nor expired).
pub const MAX_LIVE_TOKENS: u64 = 10_000;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// The compile farm: enrols agents in a working fleet without an operator (a join with
    /// this token in the join token's place, for the agent role only).
    Compile,
    /// Submitting jobs and batches (and uploading their sources); reading jobs and logs.
    Submit,
    /// Operators' actions on jobs (cancel, retry, priority) and token management.
    Admin,
}

impl TokenScope {
    /// Every scope.
    pub const ALL: [TokenScope; 3] = [TokenScope::Compile, TokenScope::Submit, TokenScope::Admin];

    /// Its name on the wire and on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Compile => "compile",
            TokenScope::Submit => "submit",
            TokenScope::Admin => "admin",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<TokenScope> {
        TokenScope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Scopes from a comma-separated list (`submit,admin`), sorted, without repeats.
    pub fn parse_list(list: &str) -> Result<Vec<TokenScope>, String> {
        let mut scopes = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            scopes
                .push(TokenScope::parse(name).ok_or_else(|| {
                    format!("no token scope {name:?} (compile, submit or admin)")
                })?);
        }
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err("a token needs at least one scope".into());
        }
        Ok(scopes)
    }

    /// `scopes` as a comma-separated list.
    pub fn join(scopes: &[TokenScope]) -> String {
        scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreateRequest {
    /// Who or what holds it (`ci-lua`, `alice`): at most [`MAX_TOKEN_NAME`] bytes, printable.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<TokenScope>,
    /// Seconds until it expires; never without.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

impl TokenCreateRequest {
    /// Whether the request is acceptable: a printable name of 1 to [`MAX_TOKEN_NAME`] bytes, at
    /// least one scope, a positive TTL of at most ten years.
    pub fn check(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty() || n.len() > MAX_TOKEN_NAME || n.chars().any(char::is_control) {
            return Err(format!(
                "a token's name must be 1 to {MAX_TOKEN_NAME} bytes without control characters"
            ));
        }
        if self.scopes.is_empty() {
            return Err("a token needs at least one scope".into());
        }
        if self.ttl_secs.is_some_and(|t| t == 0 || t > 10 * 366 * 86_400) {
            return Err("ttl_secs must be between 1 and ten years".into());
        }
        Ok(())
    }
}

/// A token as listed: never its secret nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id (the `ID` of `dsc_ID_…`).
    pub id: u64,
    /// Who or what holds it.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<TokenScope>,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds; never without.
    #[serde(default)]
    pub expires_at: Option<f64>,
    /// Unix seconds, once revoked.
    #[serde(default)]
    pub revoked_at: Option<f64>,
    /// Unix seconds, to the minute.
    #[serde(default)]
    pub last_used_at: Option<f64>,
}

impl TokenInfo {
    /// Neither revoked nor expired at `now`.
    pub fn is_live(&self, now: f64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// The answer to `POST /api/v1/tokens`: the token's text, shown this once, and its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    /// `dsc_ID_SECRET`.
    pub token: String,
    /// The record.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// The id and secret of a tenant token's text (`dsc_ID_SECRET`, the secret
/// [`TOKEN_SECRET_HEX`] lowercase hex digits); `None` for anything else.
pub fn parse_token(text: &str) -> Option<(u64, &str)> {
    let (id, secret) = text.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let id_ok = !id.is_empty() && id.len() <= 19 && id.bytes().all(|b| b.is_ascii_digit());
    let secret_ok = secret.len() == TOKEN_SECRET_HEX
        && secret.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !(id_ok && secret_ok) {
        return None;
    }
    Some((id.parse().ok()?, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_scopes_parse() {
        let secret = "0123456789abcdef".repeat(2);
        assert_eq!(parse_token(&format!("dsc_42_{secret}")), Some((42, secret.as_str())));
        for bad in ["dsc_42_abc", "dsc__0123", "dsx_1_", "dsc_x_0", "dsc_1_0123456789ABCDEF"] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
        assert_eq!(parse_token(&format!("dsc_1_{secret}0")), None);
        let scopes = TokenScope::parse_list("admin, submit,admin").unwrap_or_default();
        assert_eq!(scopes, [TokenScope::Submit, TokenScope::Admin]);
        assert_eq!(TokenScope::join(&scopes), "submit,admin");
        assert!(TokenScope::parse_list("root").is_err());
        assert!(TokenScope::parse_list("").is_err());
        let req = |name: &str, ttl| TokenCreateRequest {
            name: name.into(),
            scopes: vec![TokenScope::Submit],
            ttl_secs: ttl,
        };
        assert!(req("ci-lua", Some(3600)).check().is_ok());
        assert!(req("", None).check().is_err());
        assert!(req(&"x".repeat(65), None).check().is_err());
        assert!(req("a\nb", None).check().is_err());
        assert!(req("ci", Some(0)).check().is_err());
    }
}
