//! The web UI's pages (farm, queue, job, repositories, login) and the operator's actions
//! (cancel, retry). Data comes from the queue's store through [`Ops`]'s database thread; an
//! action goes through the same store call as the JSON API and publishes its events the same
//! way, so monitors, live pages and commit statuses see it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::{self, Session};
use super::fragments;
use super::html::{self, Page, Tab, attr, esc, utc};
use super::{Ui, UiError, error_page, with_cookie};
use crate::ops::final_aggregator::{FileKind, Manifest, Verdict, VerifyRecord, read_record};
use crate::ops::{Ops, OpsError, now};

/// The most of a log a job page shows at first (its end); the rest is in the API.
pub const MAX_PAGE_LOG: usize = 512 << 10;

fn page(
    ui: &Ui,
    session: &Session,
    title: &str,
    tab: Tab,
    live: Option<String>,
    body: &str,
) -> String {
    // Logged in with the farm token or a tenant token (a log-out button), not by loopback.
    let logged_in = session.login && (ui.sessions.has_token() || session.tenant.is_some());
    let p = Page { title, tab, live, csrf: Some(&session.csrf), logged_in };
    html::page(&p, body)
}

/// Every job, oldest first.
pub async fn all_jobs(
    ops: &std::sync::Arc<Ops>,
) -> Result<Vec<discomy_protocol::ops::JobView>, UiError> {
    Ok(ops.db(|db, _| db.list(None, None)).await?)
}

/// `/ui/`: the farm, and the package builds running on builders.
pub async fn farm(ui: &Ui, session: &Session) -> Result<String, UiError> {
    let jobs = all_jobs(&ui.ops).await?;
    let body =
        format!("<div id=\"farm\">{}</div>", fragments::farm(&ui.farm.status(), &jobs, now()));
    Ok(page(ui, session, "Farm", Tab::Farm, Some("/ui/live/overview?view=farm".into()), &body))
}

/// `/ui/queue`: the build queue and its batches.
pub async fn queue(ui: &Ui, session: &Session) -> Result<String, UiError> {
    let jobs = all_jobs(&ui.ops).await?;
    let body = format!("<div id=\"queue\">{}</div>", fragments::queue(&jobs, now()));
    Ok(page(
        ui,
        session,
        "Build queue",
        Tab::Queue,
        Some("/ui/live/overview?view=queue".into()),
        &body,
    ))
}

/// How much of `bytes` is whole lines (all of it when `all`, or when one line is longer than
/// 64 KiB): what a page shows, so a character is never cut.
pub fn whole_lines(bytes: &[u8], all: bool) -> usize {
    if all || bytes.len() >= 64 << 10 {
        return bytes.len();
    }
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// `/ui/jobs/ID[?attempt=N]`: a job, its log (live for the current attempt), history and
/// artefacts.
pub async fn job(
    ui: &Ui,
    session: &Session,
    id: u64,
    attempt: Option<u32>,
) -> Result<String, UiError> {
    let (job, events, log, attempt) = ui
        .ops
        .db(move |db, ops| {
            let job = db.job(id)?;
            let events = db.events(Some(id), 0, 100_000)?;
            let attempt = attempt.unwrap_or(job.attempt);
            let log = ops.logs.read(id, attempt)?;
            Ok((job, events, log, attempt))
        })
        .await?;
    let current = attempt == job.attempt;
    let shown = whole_lines(&log, job.state.is_final() || !current);
    let mut start = shown.saturating_sub(MAX_PAGE_LOG);
    if start > 0 {
        start += log[start..shown].iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    }
    let text = String::from_utf8_lossy(&log[start..shown]);
    let t = now();
    let mut body = format!(
        "<div id=\"job-summary\">{}</div><h2>Log of attempt {attempt}</h2><p>",
        fragments::job_summary(&job, t, &session.csrf)
    );
    for a in 1..=job.attempt {
        if a == attempt {
            let _ = write!(body, "<strong>attempt {a}</strong> ");
        } else {
            let _ = write!(body, "<a href=\"/ui/jobs/{id}?attempt={a}\">attempt {a}</a> ");
        }
    }
    let _ = write!(body, "<a href=\"/api/v1/jobs/{id}/log?attempt={attempt}\">raw</a></p>");
    if start > 0 {
        let _ = write!(
            body,
            "<p class=\"muted\">[the first {} of the log are left out]</p>",
            html::bytes(start as u64)
        );
    }
    let _ = write!(
        body,
        "<pre id=\"log\" data-attempt=\"{attempt}\" data-offset=\"{shown}\">{}</pre>\
         <h2>State history</h2><div id=\"job-history\">{}</div>\
         <h2>Artefacts</h2><div id=\"job-artifacts\">{}</div>",
        esc(&text),
        fragments::job_history(&events),
        fragments::job_artifacts(&job)
    );
    let follow = if current { "&follow=1" } else { "" };
    let live = format!("/ui/live/jobs/{id}?attempt={attempt}&offset={shown}{follow}");
    Ok(page(ui, session, &format!("Job #{id}: {}", job.name), Tab::Queue, Some(live), &body))
}

/// `GET /ui/jobs/ID/artifacts/NAME`: an artefact of the job's current attempt.
pub async fn artifact(ui: &Ui, id: u64, name: &str) -> Result<Response, UiError> {
    let name = name.to_owned();
    let blob = ui
        .ops
        .db(move |db, _| {
            let job = db.job(id)?;
            job.artifacts
                .into_iter()
                .find(|a| a.name == name)
                .ok_or_else(|| OpsError::Missing(format!("artefact {name:?} of job {id}")))
        })
        .await?;
    let mut resp = crate::ops::api::blob_response(&ui.ops, &blob.blake3).await?;
    let safe: String = blob
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._+-~".contains(c) { c } else { '_' })
        .collect();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    html::secure_headers(headers);
    Ok(resp)
}

/// One published repository, as its current generation's manifest says.
struct RepoInfo {
    name: String,
    target: String,
    manifest: Result<Manifest, String>,
    generations: usize,
    /// Its last verify (`NAME.verify.json`): `None` when none is recorded.
    verify: Result<Option<VerifyRecord>, String>,
}

fn read_repos(root: &Path) -> Result<Vec<RepoInfo>, std::io::Error> {
    let mut repos = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_symlink() {
            continue;
        }
        let target =
            std::fs::read_link(entry.path()).map(|t| t.display().to_string()).unwrap_or_default();
        let manifest = Manifest::read(&entry.path()).map_err(|e| e.to_string());
        let generations = std::fs::read_dir(root.join(format!("{name}.d")))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                    .count()
            })
            .unwrap_or(0);
        let verify = read_record(root, &name).map_err(|e| e.to_string());
        repos.push(RepoInfo { name, target, manifest, generations, verify });
    }
    repos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(repos)
}

/// `/ui/repos`: the published repositories and their current generation.
pub async fn repos(ui: &Ui, session: &Session) -> Result<String, UiError> {
    let Some(publish) = ui.ops.config.publish.clone() else {
        let body = "<p id=\"repos\" class=\"muted\">Publishing is not configured (no \
                    <code>[ops.publish]</code> in the coordinator's configuration).</p>";
        return Ok(page(ui, session, "Repositories", Tab::Repos, None, body));
    };
    let root = publish.repos_root.clone();
    let repos = tokio::task::spawn_blocking(move || read_repos(&root))
        .await
        .map_err(|e| UiError::Task(e.to_string()))?;
    let mut body = format!(
        "<p>Repositories under <code>{}</code>, and the last <em>verify</em> of each (<code>discomy \
         repo verify NAME --public-key KEY</code> records its result beside the repository).</p>\
         <table id=\"repos\"><tr><th>Repository</th><th>Generation</th><th>Batch</th>\
         <th>Published (UTC)</th><th>Packages</th><th>Source packages</th><th>Signed files</th>\
         <th>Key</th><th>Generations kept</th></tr>",
        esc(&publish.repos_root.display().to_string())
    );
    match repos {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            body.push_str("<tr><td colspan=\"9\" class=\"muted\">nothing published yet</td></tr>");
        }
        Err(e) => return Err(OpsError::Io(e).into()),
        Ok(repos) if repos.is_empty() => {
            body.push_str("<tr><td colspan=\"9\" class=\"muted\">nothing published yet</td></tr>");
        }
        Ok(repos) => {
            let mut verifies = String::new();
            for r in repos {
                verify_row(&mut verifies, &r.name, &r.verify);
                let _ = write!(body, "<tr id=\"repo-{}\"><td>{}</td>", attr(&r.name), esc(&r.name));
                match &r.manifest {
                    Ok(m) => {
                        let count = |k: FileKind| m.files.iter().filter(|f| f.kind == k).count();
                        let _ = write!(
                            body,
                            "<td>{} <span class=\"muted\">({})</span></td><td>{}</td><td>{}</td>\
                             <td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td>",
                            m.generation,
                            esc(&r.target),
                            esc(&m.batch),
                            utc(m.created_unix as f64),
                            count(FileKind::Package),
                            count(FileKind::SourcePackage),
                            m.files.iter().filter(|f| f.signed).count(),
                            esc(&m.key_id),
                            r.generations
                        );
                    }
                    Err(e) => {
                        let _ = write!(body, "<td colspan=\"8\" class=\"err\">{}</td>", esc(e));
                    }
                }
                body.push_str("</tr>");
            }
            let _ = write!(
                body,
                "</table><h2>Last verify</h2><table id=\"verifies\"><tr><th>Repository</th>\
                 <th>Verdict</th><th>When (UTC)</th><th>Generation</th><th>Files</th>\
                 <th>Signatures</th><th>Problems</th><th>Run by</th></tr>{verifies}"
            );
        }
    }
    body.push_str("</table>");
    Ok(page(ui, session, "Repositories", Tab::Repos, None, &body))
}

/// One row of the last-verify table: `tr#verify-NAME`, its verdict also in `data-verdict` (`ok`,
/// `failed`, `error`, `none`, `unreadable`).
fn verify_row(out: &mut String, name: &str, verify: &Result<Option<VerifyRecord>, String>) {
    let _ = write!(out, "<tr id=\"verify-{}\"", attr(name));
    let v = match verify {
        Err(e) => {
            let _ = write!(
                out,
                " data-verdict=\"unreadable\"><td>{}</td><td colspan=\"7\" class=\"err\">\
                 unreadable: {}</td></tr>",
                esc(name),
                esc(e)
            );
            return;
        }
        Ok(None) => {
            let _ = write!(
                out,
                " data-verdict=\"none\"><td>{}</td><td colspan=\"7\" class=\"muted\">never \
                 verified (no record)</td></tr>",
                esc(name)
            );
            return;
        }
        Ok(Some(v)) => v,
    };
    let (word, class) = match v.verdict {
        Verdict::Ok => ("ok", "st-succeeded"),
        Verdict::Failed => ("failed", "st-failed"),
        Verdict::Error => ("error", "st-failed"),
    };
    let generation = v.generation.map_or_else(|| "—".to_owned(), |g| g.to_string());
    let _ = write!(
        out,
        " data-verdict=\"{word}\"><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td>\
         <td>{generation}</td><td>{}</td><td>{}</td><td>{}",
        esc(name),
        utc(v.at_unix as f64),
        v.files_checked,
        v.signatures_checked,
        v.problem_count
    );
    if let Some(e) = &v.error {
        let _ = write!(out, " <span class=\"err\">{}</span>", esc(e));
    }
    if !v.problems.is_empty() {
        out.push_str("<ul class=\"problems\">");
        for p in &v.problems {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|k| k.as_str().map(String::from))
                .unwrap_or_default();
            let _ = write!(
                out,
                "<li><strong>{}</strong> <code>{}</code> <span class=\"muted\">{}</span></li>",
                esc(&kind),
                esc(&p.path),
                esc(&p.detail)
            );
        }
        if v.problem_count > v.problems.len() {
            let _ = write!(
                out,
                "<li class=\"muted\">and {} more (run the verify to see them all)</li>",
                v.problem_count - v.problems.len()
            );
        }
        out.push_str("</ul>");
    }
    let _ = write!(out, "</td><td>{}</td></tr>", esc(&v.by));
}

/// An operator's action on a job.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Cancel a live job.
    Cancel,
    /// Queue a failed or cancelled job again.
    Retry,
    /// Give a waiting job a new priority (the form's `priority`).
    Priority,
}

/// `POST /ui/jobs/ID/{cancel,retry,priority}`: a session and its CSRF token are required.
pub async fn act(
    ui: &Ui,
    peer: SocketAddr,
    headers: &HeaderMap,
    id: u64,
    action: Action,
    body: &[u8],
) -> Response {
    let what = format!("job {id}: {action:?}");
    let (session, form) = match ui.admin_action(peer, headers, body, &what).await {
        Ok(allowed) => allowed,
        Err(refused) => return refused,
    };
    let who = match session.tenant {
        Some(token) => format!("the web UI ({}, token {token})", peer.ip()),
        None => format!("the web UI ({})", peer.ip()),
    };
    let priority = form.get("priority").map(|p| p.trim().parse::<i32>());
    let priority = match (action, priority) {
        (Action::Priority, Some(Ok(p))) => p,
        (Action::Priority, _) => {
            return error_page(StatusCode::BAD_REQUEST, "the priority must be a whole number");
        }
        _ => 0,
    };
    let result = ui
        .ops
        .db(move |db, _| match action {
            Action::Cancel => db.cancel(id, &who, now()),
            Action::Retry => db.retry(id, &who, now()),
            Action::Priority => db.set_priority(id, priority, &who, now()),
        })
        .await;
    match result {
        Ok((_, events)) => {
            tracing::info!(%peer, job = id, ?action, "web UI action");
            ui.ops.publish(events);
            Redirect::to(&format!("/ui/jobs/{id}")).into_response()
        }
        Err(err) => UiError::from(err).into_response(),
    }
}

/// The login form: the farm token or a tenant token (without a farm token, loopback clients
/// need no login, which it says).
pub fn login_form(ui: &Ui, status: StatusCode, message: Option<&str>) -> Response {
    let mut body = String::new();
    if let Some(m) = message {
        let _ = write!(body, "<p class=\"err\" id=\"error\">{}</p>", esc(m));
    }
    if !ui.sessions.has_token() {
        body.push_str(
            "<p>This coordinator has no farm token: clients on its own host (loopback) use the \
             UI without logging in; others log in with a tenant token. \
             <a href=\"/ui/\">Go to the farm</a>.</p>",
        );
    }
    body.push_str(
        "<form method=\"post\" action=\"/ui/login\"><label>Farm or tenant token \
         <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus>\
         </label> <button id=\"login\" type=\"submit\">Log in</button></form>",
    );
    let p = Page { title: "Log in", tab: Tab::None, live: None, csrf: None, logged_in: false };
    html::respond(status, html::page(&p, &body))
}

/// `POST /ui/login`: the farm token or a live tenant token, checked; a session on success (a
/// tenant token's holds its scopes).
pub async fn login(ui: &Ui, peer: SocketAddr, headers: &HeaderMap, body: &[u8]) -> Response {
    use crate::ops::tokens::Caller;
    let form = auth::form_fields(body);
    let given = form.get("token").map_or("", String::as_str);
    let tenant = match ui.ops.caller(Some(given), false).await {
        Ok(Ok(Caller::Tenant { id, scopes, .. })) => {
            Some((id, scopes.contains(&discomy_protocol::ops::TokenScope::Admin)))
        }
        _ => None,
    };
    let farm = ui.sessions.token_ok(given);
    if !auth::same_origin(headers) || !(farm || tenant.is_some()) {
        tracing::warn!(%peer, "web UI login refused");
        // Slows down guessing (one connection at a time per guess).
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        return login_form(ui, StatusCode::UNAUTHORIZED, Some("wrong, revoked or expired token"));
    }
    let made = match tenant {
        Some((id, admin)) if !farm => ui.sessions.create_tenant(id, admin),
        _ => ui.sessions.create(true),
    };
    match made {
        Ok((_, cookie)) => {
            tracing::info!(%peer, "web UI login");
            with_cookie(Redirect::to("/ui/").into_response(), Some(cookie))
        }
        Err(err) => UiError::from(err).into_response(),
    }
}
