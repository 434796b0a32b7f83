//! CI notification: the conclusion of a pushed commit's jobs, posted to its forge as a commit
//! status, as each forge documents it:
//!
//! - GitHub: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: Bearer TOKEN`,
//!   `Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28`; body `state`
//!   (`pending`, `success`, `failure`), `target_url`, `description`, `context`.
//! - Gitea/Forgejo: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: token
//!   TOKEN`; the same body.
//! - GitLab: `POST {api}/projects/{id}/statuses/{sha}`, `PRIVATE-TOKEN: TOKEN`; body `state`
//!   (`pending`, `success`, `failed`), `target_url`, `description`, `name`, `ref`.
//!
//! Each target's batch of a push is one *watch* in the [`super::outbox`], stored with the jobs
//! it follows and the last state the forge acknowledged: `pending` once queued, then `success`
//! or `failure` when every job has ended. A forge that is down or refuses is tried again with a
//! backoff (5 s, doubling, at most 10 min), forever: the watch stays in the database until the
//! forge took its final state, and a late delivery sends the current state, never an older one.
//!
//! [`forge_tls`]: forges over https are verified against the system's root certificates and the
//! operator's `forge_ca_file`.

pub mod forge_tls;
#[cfg(test)]
mod https_tests;

use discomy_protocol::ops::JobState;
use serde::{Deserialize, Serialize};

use super::job_listener::forge::Forge;
use super::store::QueueStore;
use super::{Ops, OpsError, now};
use forge_tls::ForgeClient;

/// The outbox kind of a watch.
pub const WATCH: &str = "watch";

/// A commit status's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Queued or building.
    Pending,
    /// Every job succeeded.
    Success,
    /// A job failed or was cancelled.
    Failure,
}

/// What to tell the forge, and what it already knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watch {
    /// The forge.
    pub forge: Forge,
    /// The repository, as the forge names it.
    pub repo: String,
    /// GitLab's numeric project id (its status API needs it).
    pub project_id: Option<u64>,
    /// The commit.
    pub sha: String,
    /// The pushed ref (`refs/heads/…`).
    pub git_ref: String,
    /// The status's name (`discomy/el9-x86_64`).
    pub context: String,
    /// Where people see the jobs.
    pub target_url: String,
    /// The jobs.
    pub jobs: Vec<u64>,
    /// The last state the forge accepted.
    pub sent: Option<State>,
}

/// One HTTP request to a forge.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The URL.
    pub url: String,
    /// Its headers.
    pub headers: Vec<(&'static str, String)>,
    /// Its JSON body.
    pub body: serde_json::Value,
}

/// The request that sets `state` with `description` on the watched commit.
pub fn request(w: &Watch, api: &str, token: &str, state: State, description: &str) -> Request {
    let api = api.trim_end_matches('/');
    match w.forge {
        Forge::Github | Forge::Gitea => {
            let state_name = match state {
                State::Pending => "pending",
                State::Success => "success",
                State::Failure => "failure",
            };
            let auth = if w.forge == Forge::Github {
                format!("Bearer {token}")
            } else {
                format!("token {token}")
            };
            let mut headers = vec![
                ("Authorization", auth),
                ("Content-Type", "application/json".to_owned()),
                ("User-Agent", concat!("discomy/", env!("CARGO_PKG_VERSION")).to_owned()),
            ];
            if w.forge == Forge::Github {
                headers.push(("Accept", "application/vnd.github+json".to_owned()));
                headers.push(("X-GitHub-Api-Version", "2022-11-28".to_owned()));
            }
            Request {
                url: format!("{api}/repos/{}/statuses/{}", w.repo, w.sha),
                headers,
                body: serde_json::json!({
                    "state": state_name,
                    "target_url": w.target_url,
                    "description": description,
                    "context": w.context,
                }),
            }
        }
        Forge::Gitlab => {
            let state_name = match state {
                State::Pending => "pending",
                State::Success => "success",
                State::Failure => "failed",
            };
            // The numeric id when the hook gave one, else the URL-encoded path.
            let project = match w.project_id {
                Some(id) => id.to_string(),
                None => w.repo.replace('/', "%2F"),
            };
            let branch = w.git_ref.strip_prefix("refs/heads/").unwrap_or(&w.git_ref);
            Request {
                url: format!("{api}/projects/{project}/statuses/{}", w.sha),
                headers: vec![
                    ("PRIVATE-TOKEN", token.to_owned()),
                    ("Content-Type", "application/json".to_owned()),
                ],
                body: serde_json::json!({
                    "state": state_name,
                    "target_url": w.target_url,
                    "description": description,
                    "name": w.context,
                    "ref": branch,
                }),
            }
        }
    }
}

/// The state the watched jobs are in, with a description.
fn conclusion(jobs: &[(String, JobState)]) -> (State, String) {
    let total = jobs.len();
    let built = jobs.iter().filter(|(_, s)| *s == JobState::Succeeded).count();
    if jobs.iter().any(|(_, s)| !s.is_final()) {
        return (State::Pending, format!("{built} of {total} packages built"));
    }
    let failed: Vec<&str> = jobs
        .iter()
        .filter(|(_, s)| *s != JobState::Succeeded)
        .map(|(name, _)| name.as_str())
        .collect();
    if failed.is_empty() {
        (State::Success, format!("{total} of {total} packages built"))
    } else {
        (State::Failure, format!("failed: {}", failed.join(", ")))
    }
}

/// Backoff before retry number `attempts` of a delivery.
fn backoff(attempts: u32) -> f64 {
    (5.0 * 2f64.powi(attempts.saturating_sub(1).min(10) as i32)).min(600.0)
}

/// POSTs `req` to its forge; any 2xx is success.
pub fn post(client: &ForgeClient, req: &Request) -> Result<(), String> {
    let body = serde_json::to_vec(&req.body).map_err(|e| e.to_string())?;
    client.post(&req.url, &req.headers, &body)
}

/// One watch: the jobs' state, and the forge told when it changed. Blocking.
pub(super) fn step(ops: &Ops, id: u64, payload: &str, attempts: u32) {
    let with_db =
        |f: &mut dyn FnMut(&mut dyn QueueStore) -> Result<(), OpsError>| ops.blocking_db(f);
    let Ok(mut watch) = serde_json::from_str::<Watch>(payload) else {
        tracing::warn!(id, "CI notifications: an unreadable watch is dropped");
        let _ = with_db(&mut |db| db.outbox_done(id, now()));
        return;
    };
    let mut jobs = Vec::new();
    let read = with_db(&mut |db| {
        jobs = watch
            .jobs
            .iter()
            .map(|&j| db.job(j).map(|v| (v.name, v.state)))
            .collect::<Result<_, _>>()?;
        Ok(())
    });
    if let Err(err) = read {
        tracing::warn!(id, %err, "CI notifications: the watched jobs could not be read");
        let _ = with_db(&mut |db| db.outbox_later(id, now() + 5.0, payload, &err.to_string()));
        return;
    }
    let (state, description) = conclusion(&jobs);
    let repo = ops.repos.iter().find(|r| r.forge() == watch.forge && r.name() == watch.repo);
    let Some((api, token)) = repo.and_then(|r| r.status_api()) else {
        // No status API configured for it (any more): nothing to tell.
        let _ = with_db(&mut |db| db.outbox_done(id, now()));
        return;
    };
    let result = if watch.sent == Some(state) {
        Ok(())
    } else {
        let client = ForgeClient::for_ca_file(ops.config.forge_ca_file.as_deref());
        let posted = client
            .map_err(|e| e.to_string())
            .and_then(|c| post(&c, &request(&watch, api, token, state, &description)));
        ops.counters.notification(posted.is_ok());
        posted
    };
    let saved = match result {
        Ok(()) => {
            watch.sent = Some(state);
            if state == State::Pending {
                let payload = serde_json::to_string(&watch).unwrap_or_default();
                with_db(&mut |db| db.outbox_later(id, now() + 2.0, &payload, ""))
            } else {
                tracing::info!(repo = watch.repo, sha = watch.sha, ?state, "commit status sent");
                with_db(&mut |db| db.outbox_done(id, now()))
            }
        }
        Err(why) => {
            let delay = backoff(attempts);
            tracing::warn!(repo = watch.repo, %why, delay, "commit status not delivered; retrying");
            with_db(&mut |db| db.outbox_later(id, now() + delay, payload, &why))
        }
    };
    if let Err(err) = saved {
        tracing::warn!(id, %err, "CI notifications: the watch could not be saved");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch of `rpms/lua`'s commit `aaa…` for `forge` (the HTTPS tests' too).
    pub(super) fn watch(forge: Forge) -> Watch {
        Watch {
            forge,
            repo: "rpms/lua".into(),
            project_id: Some(42),
            sha: "a".repeat(40),
            git_ref: "refs/heads/c9s".into(),
            context: "discomy/el9-x86_64".into(),
            target_url: "http://coord:3635/api/v1/jobs?batch=x".into(),
            jobs: vec![1],
            sent: None,
        }
    }

    #[test]
    fn requests_as_each_forge_documents_them() {
        let gh =
            request(&watch(Forge::Github), "https://api.github.com/", "T", State::Failure, "d");
        assert_eq!(
            gh.url,
            format!("https://api.github.com/repos/rpms/lua/statuses/{}", "a".repeat(40))
        );
        assert!(gh.headers.contains(&("Authorization", "Bearer T".into())));
        assert_eq!(gh.body["state"], "failure");
        assert_eq!(gh.body["context"], "discomy/el9-x86_64");
        let gl = request(&watch(Forge::Gitlab), "https://gl/api/v4", "T", State::Failure, "d");
        assert_eq!(gl.url, format!("https://gl/api/v4/projects/42/statuses/{}", "a".repeat(40)));
        assert!(gl.headers.contains(&("PRIVATE-TOKEN", "T".into())));
        assert_eq!(
            (gl.body["state"].as_str(), gl.body["ref"].as_str()),
            (Some("failed"), Some("c9s"))
        );
        let gt = request(&watch(Forge::Gitea), "https://gitea/api/v1", "T", State::Success, "d");
        assert!(gt.headers.contains(&("Authorization", "token T".into())));
    }

    #[test]
    fn conclusions_and_backoff() {
        let j = |s| ("lua".to_owned(), s);
        assert_eq!(conclusion(&[j(JobState::Running)]).0, State::Pending);
        assert_eq!(conclusion(&[j(JobState::Succeeded)]).0, State::Success);
        let (state, why) = conclusion(&[j(JobState::Succeeded), ("bad".into(), JobState::Failed)]);
        assert_eq!(state, State::Failure);
        assert!(why.contains("bad"));
        assert_eq!((backoff(1), backoff(2), backoff(20)), (5.0, 10.0, 600.0));
    }
}
