//! What a forge's webhook request says, checked as each forge documents it. Pure functions over
//! the request's headers and body:
//!
//! - GitHub: `X-Hub-Signature-256: sha256=HEX`, HMAC-SHA256 of the body under the hook's
//!   secret; `X-GitHub-Event` (`push`, `pull_request`, `ping`); `X-GitHub-Delivery`.
//! - Gitea and Forgejo: the same `X-Hub-Signature-256`, or `X-Gitea-Signature` /
//!   `X-Forgejo-Signature` (the bare hex HMAC); `X-Gitea-Event` / `X-Forgejo-Event`;
//!   `X-Gitea-Delivery` / `X-Forgejo-Delivery`.
//! - GitLab: `X-Gitlab-Token` (the secret itself); `X-Gitlab-Event` (`Push Hook`,
//!   `Merge Request Hook`); `X-Gitlab-Event-UUID` (or `X-Gitlab-Webhook-UUID`).
//!
//! Signatures and tokens are compared in constant time.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The forges whose webhooks are understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forge {
    /// GitHub (and GitHub Enterprise).
    Github,
    /// Gitea and Forgejo.
    Gitea,
    /// GitLab.
    Gitlab,
}

impl Forge {
    /// The forge named in the hook's path (`/api/v1/hooks/NAME`).
    pub fn parse(name: &str) -> Option<Forge> {
        match name {
            "github" => Some(Forge::Github),
            "gitea" | "forgejo" => Some(Forge::Gitea),
            "gitlab" => Some(Forge::Gitlab),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitea => "gitea",
            Forge::Gitlab => "gitlab",
        }
    }
}

/// Why a webhook is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// No signature or token, or a wrong one (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A required header is missing or the body is not what the forge sends (400).
    #[error("{0}")]
    Malformed(String),
}

/// What the hook asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The forge checks the hook.
    Ping,
    /// A push of `sha` to `git_ref` (`refs/heads/…`, `refs/tags/…`).
    Push {
        /// The ref.
        git_ref: String,
        /// The new commit.
        sha: String,
    },
    /// A pull/merge request opened or updated: its head commit, fetched as `git_ref`.
    Change {
        /// The request's number.
        number: u64,
        /// Where its head can be fetched from the repository (`refs/pull/N/head`, …).
        git_ref: String,
        /// The head commit.
        sha: String,
    },
    /// Anything else (a deleted branch, a closed request, another event): acknowledged, ignored.
    Ignored(String),
}

fn header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names.iter().find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
}

/// The delivery's unique id (replays are refused by it).
pub fn delivery_id(forge: Forge, headers: &HeaderMap) -> Result<String, HookError> {
    let names: &[&str] = match forge {
        Forge::Github => &["x-github-delivery"],
        Forge::Gitea => &["x-gitea-delivery", "x-forgejo-delivery", "x-github-delivery"],
        Forge::Gitlab => &["x-gitlab-event-uuid", "x-gitlab-webhook-uuid"],
    };
    let id = header(headers, names)
        .ok_or_else(|| HookError::Malformed(format!("no delivery id ({})", names.join(", "))))?;
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HookError::Malformed("the delivery id is not a plain token".into()));
    }
    Ok(id.to_owned())
}

/// Checks the request against the hook's `secret`.
pub fn verify(
    forge: Forge,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), HookError> {
    if forge == Forge::Gitlab {
        let token = header(headers, &["x-gitlab-token"])
            .ok_or_else(|| HookError::Unauthenticated("no X-Gitlab-Token".into()))?;
        // blake3::Hash compares in constant time.
        return if blake3::hash(token.as_bytes()) == blake3::hash(secret) {
            Ok(())
        } else {
            Err(HookError::Unauthenticated("wrong X-Gitlab-Token".into()))
        };
    }
    let hex = match header(headers, &["x-hub-signature-256"]) {
        Some(value) => value.strip_prefix("sha256=").ok_or_else(|| {
            HookError::Unauthenticated("X-Hub-Signature-256 is not sha256=…".into())
        })?,
        None if forge == Forge::Gitea => {
            header(headers, &["x-gitea-signature", "x-forgejo-signature"])
                .ok_or_else(|| HookError::Unauthenticated("no signature header".into()))?
        }
        None => return Err(HookError::Unauthenticated("no X-Hub-Signature-256".into())),
    };
    let signature = decode_hex(hex)
        .ok_or_else(|| HookError::Unauthenticated("the signature is not 64 hex digits".into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| HookError::Unauthenticated("unusable secret".into()))?;
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| HookError::Unauthenticated("wrong signature".into()))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..32).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// The repository a payload is about: `repository.full_name` (GitHub, Gitea) or
/// `project.path_with_namespace` (GitLab).
pub fn repository(forge: Forge, payload: &serde_json::Value) -> Result<String, HookError> {
    let name = match forge {
        Forge::Gitlab => payload["project"]["path_with_namespace"].as_str(),
        _ => payload["repository"]["full_name"].as_str(),
    };
    name.map(str::to_owned)
        .ok_or_else(|| HookError::Malformed("the payload names no repository".into()))
}

fn sha(value: &serde_json::Value, what: &str) -> Result<String, HookError> {
    let sha = value.as_str().unwrap_or_default();
    if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha.to_ascii_lowercase())
    } else {
        Err(HookError::Malformed(format!("{what} is not a commit id")))
    }
}

/// The event of a verified request.
pub fn event(
    forge: Forge,
    headers: &HeaderMap,
    payload: &serde_json::Value,
) -> Result<Event, HookError> {
    let names: &[&str] = match forge {
        Forge::Github => &["x-github-event"],
        Forge::Gitea => &["x-gitea-event", "x-forgejo-event", "x-github-event"],
        Forge::Gitlab => &["x-gitlab-event"],
    };
    let kind =
        header(headers, names).ok_or_else(|| HookError::Malformed("no event header".into()))?;
    match (forge, kind) {
        (_, "ping") | (Forge::Gitlab, "System Hook") => Ok(Event::Ping),
        (Forge::Github | Forge::Gitea, "push") | (Forge::Gitlab, "Push Hook" | "Tag Push Hook") => {
            let git_ref = payload["ref"].as_str().unwrap_or_default().to_owned();
            let sha = sha(&payload["after"], "after")?;
            if sha.bytes().all(|b| b == b'0') {
                return Ok(Event::Ignored(format!("{git_ref} was deleted")));
            }
            if !git_ref.starts_with("refs/") || git_ref.contains("..") || git_ref.len() > 255 {
                return Err(HookError::Malformed(format!("ref {git_ref:?}")));
            }
            Ok(Event::Push { git_ref, sha })
        }
        (Forge::Github | Forge::Gitea, "pull_request") => {
            let action = payload["action"].as_str().unwrap_or_default();
            if !matches!(action, "opened" | "synchronize" | "synchronized" | "reopened") {
                return Ok(Event::Ignored(format!("pull request {action}")));
            }
            let number = payload["number"]
                .as_u64()
                .ok_or_else(|| HookError::Malformed("no number".into()))?;
            let sha = sha(&payload["pull_request"]["head"]["sha"], "pull_request.head.sha")?;
            Ok(Event::Change { number, git_ref: format!("refs/pull/{number}/head"), sha })
        }
        (Forge::Gitlab, "Merge Request Hook") => {
            let attrs = &payload["object_attributes"];
            let action = attrs["action"].as_str().unwrap_or_default();
            if !matches!(action, "open" | "update" | "reopen") {
                return Ok(Event::Ignored(format!("merge request {action}")));
            }
            let number =
                attrs["iid"].as_u64().ok_or_else(|| HookError::Malformed("no iid".into()))?;
            let sha = sha(&attrs["last_commit"]["id"], "object_attributes.last_commit.id")?;
            Ok(Event::Change { number, git_ref: format!("refs/merge-requests/{number}/head"), sha })
        }
        (_, other) => Ok(Event::Ignored(format!("event {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        discomy_protocol::digest::hex(&mac.finalize().into_bytes())
    }

    #[test]
    fn signatures_as_the_forges_send_them() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = format!("sha256={}", sign(b"s3cret", body));
        let gh = headers(&[("x-hub-signature-256", &good)]);
        assert_eq!(verify(Forge::Github, &gh, body, b"s3cret"), Ok(()));
        assert!(verify(Forge::Github, &gh, body, b"other").is_err());
        assert!(verify(Forge::Github, &gh, b"{}", b"s3cret").is_err(), "body changed");
        assert!(verify(Forge::Github, &HeaderMap::new(), body, b"s3cret").is_err());
        let gitea = headers(&[("x-gitea-signature", &sign(b"s3cret", body))]);
        assert_eq!(verify(Forge::Gitea, &gitea, body, b"s3cret"), Ok(()));
        assert!(verify(Forge::Github, &gitea, body, b"s3cret").is_err(), "GitHub signs in X-Hub");
        let gl = headers(&[("x-gitlab-token", "s3cret")]);
        assert_eq!(verify(Forge::Gitlab, &gl, body, b"s3cret"), Ok(()));
        assert!(verify(Forge::Gitlab, &gl, body, b"s3cret!").is_err());
    }

    #[test]
    fn events_name_the_commit_to_build() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let push = serde_json::json!({"ref": "refs/heads/c9s", "after": sha,
            "repository": {"full_name": "rpms/lua"}});
        let h = headers(&[("x-github-event", "push")]);
        assert_eq!(
            event(Forge::Github, &h, &push).unwrap(),
            Event::Push { git_ref: "refs/heads/c9s".into(), sha: sha.into() }
        );
        assert_eq!(repository(Forge::Github, &push).unwrap(), "rpms/lua");
        let deleted = serde_json::json!({"ref": "refs/heads/x", "after": "0".repeat(40)});
        assert!(matches!(event(Forge::Github, &h, &deleted).unwrap(), Event::Ignored(_)));
        let mr = serde_json::json!({"object_attributes": {"action": "open", "iid": 7,
            "last_commit": {"id": sha}}, "project": {"path_with_namespace": "rpms/lua"}});
        let h = headers(&[("x-gitlab-event", "Merge Request Hook")]);
        assert_eq!(
            event(Forge::Gitlab, &h, &mr).unwrap(),
            Event::Change {
                number: 7,
                git_ref: "refs/merge-requests/7/head".into(),
                sha: sha.into()
            }
        );
        let bad = serde_json::json!({"ref": "refs/heads/x", "after": "not-a-sha"});
        let h = headers(&[("x-gitea-event", "push")]);
        assert!(event(Forge::Gitea, &h, &bad).is_err());
    }
}
