//! The web UI's Fleet tab: the working fleet's join requests and nodes (`/ui/fleet`), and the
//! operator's decisions on them (`POST /ui/fleet/ID/{approve,reject,revoke}`), the same as
//! `discomy nodes list|approve|reject|revoke` through the same [`Fleet::command`].
//!
//! Everything a joiner sent (name, organisation, contact, network note) is hostile input: every
//! field is escaped. Actions need a session, its CSRF token and the admin scope, as the job
//! actions in [`super::pages`] do. A coordinator without a fleet (a plain-token lab farm) says
//! so.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use discomy_protocol::fleet::{FleetAnswer, FleetCommand, FleetRole, NodeRecord};

use super::auth::Session;
use super::html::{self, Page, Tab, attr, esc, utc};
use super::{Ui, UiError, error_page};
use crate::fleet::Fleet;

/// An operator's decision on a request or node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetAction {
    /// Approve a pending request: the node gets its certificate.
    Approve,
    /// Reject a pending request (the form's `reason`, optional).
    Reject,
    /// Revoke an approved node: its certificates are refused, its connections closed.
    Revoke,
}

impl FleetAction {
    /// The action named in the URL.
    pub fn parse(name: &str) -> Option<FleetAction> {
        match name {
            "approve" => Some(FleetAction::Approve),
            "reject" => Some(FleetAction::Reject),
            "revoke" => Some(FleetAction::Revoke),
            _ => None,
        }
    }
}

fn page(ui: &Ui, session: &Session, body: &str) -> String {
    let logged_in = session.login && (ui.sessions.has_token() || session.tenant.is_some());
    let p =
        Page { title: "Fleet", tab: Tab::Fleet, live: None, csrf: Some(&session.csrf), logged_in };
    html::page(&p, body)
}

async fn list(fleet: Arc<Fleet>) -> Result<Vec<NodeRecord>, UiError> {
    let answer = tokio::task::spawn_blocking(move || fleet.command(FleetCommand::List))
        .await
        .map_err(|e| UiError::Task(e.to_string()))?;
    match answer {
        Ok(FleetAnswer::Nodes(nodes)) => Ok(nodes),
        Ok(other) => Err(UiError::Task(format!("unexpected fleet answer {other:?}"))),
        Err(e) => Err(UiError::Task(e)),
    }
}

fn roles(roles: &[FleetRole]) -> String {
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
}

/// One button posting `action` for request `id`, with the session's CSRF token.
fn button(out: &mut String, id: u64, action: &str, csrf: &str, reason: bool) {
    let _ = write!(
        out,
        "<form class=\"inline\" method=\"post\" action=\"/ui/fleet/{id}/{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        attr(csrf)
    );
    if reason {
        out.push_str(
            "<input name=\"reason\" placeholder=\"reason\" maxlength=\"256\" size=\"12\">",
        );
    }
    let _ = write!(out, "<button id=\"{action}-{id}\">{action}</button></form> ");
}

/// One row of the fleet table: `tr#node-ID` with its state in `data-state`.
fn row(out: &mut String, n: &NodeRecord, csrf: &str, admin: bool, now: u64) {
    let f = &n.facts;
    let expiry = match n.not_after {
        Some(t) if t <= now => format!("{} <span class=\"err\">(expired)</span>", utc(t as f64)),
        Some(t) => utc(t as f64),
        None => "—".into(),
    };
    let by = match &n.enrolled_by {
        Some(by) => format!("<br><span class=\"muted\">enrolled by {}</span>", esc(by)),
        None => String::new(),
    };
    let _ = write!(
        out,
        "<tr id=\"node-{}\" data-state=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{} cores, {} memory, {} disk<br><span class=\"muted\">{}</span></td>\
         <td>{}{by}</td><td><code>{}</code></td><td>{expiry}</td><td>{}<br>\
         <span class=\"muted\">{}</span></td><td>",
        n.request,
        attr(&n.state),
        n.request,
        esc(&n.name),
        esc(&f.organisation),
        esc(&f.contact),
        esc(&roles(&n.roles)),
        f.cores,
        html::bytes(f.memory_bytes),
        html::bytes(f.disk_bytes),
        esc(&f.network),
        esc(&n.state),
        esc(n.serial.as_deref().unwrap_or("—")),
        utc(n.asked_at as f64),
        esc(&n.asked_from),
    );
    if admin {
        match n.state.as_str() {
            "pending" => {
                button(out, n.request, "approve", csrf, false);
                button(out, n.request, "reject", csrf, true);
            }
            "approved" => button(out, n.request, "revoke", csrf, false),
            _ => {}
        }
    }
    out.push_str("</td></tr>");
}

/// `/ui/fleet`: requests waiting for an operator first, then every node.
pub async fn fleet_page(ui: &Ui, session: &Session) -> Result<String, UiError> {
    let Some(fleet) = ui.farm.fleet().cloned() else {
        let body = "<p id=\"fleet\" class=\"muted\">This coordinator runs without a working fleet \
                    (a plain-token lab farm: no <code>--fleet-dir</code>), so there are no join \
                    requests or node certificates to manage.</p>";
        return Ok(page(ui, session, body));
    };
    let mut nodes = list(fleet).await?;
    // Pending first (oldest first), then the rest, newest first.
    nodes.sort_by_key(|n| {
        (n.state != "pending", if n.state == "pending" { n.request } else { u64::MAX - n.request })
    });
    let pending = nodes.iter().filter(|n| n.state == "pending").count();
    let now = crate::ops::now() as u64;
    let mut body = format!(
        "<p id=\"fleet-summary\">{pending} join request(s) wait for an operator; {} node(s) \
         approved. The same as <code>discomy nodes list|approve|reject|revoke</code>.</p>",
        nodes.iter().filter(|n| n.state == "approved").count()
    );
    if !session.admin {
        body.push_str("<p class=\"muted\">Deciding needs the admin scope.</p>");
    }
    body.push_str(
        "<table id=\"fleet\"><tr><th>Request</th><th>Name</th><th>Organisation</th>\
         <th>Contact</th><th>Roles</th><th>Facts</th><th>State</th><th>Certificate serial</th>\
         <th>Expires (UTC)</th><th>Asked (UTC), from</th><th></th></tr>",
    );
    if nodes.is_empty() {
        body.push_str("<tr><td colspan=\"11\" class=\"muted\">no join requests yet</td></tr>");
    }
    for n in &nodes {
        row(&mut body, n, &session.csrf, session.admin, now);
    }
    body.push_str("</table>");
    Ok(page(ui, session, &body))
}

/// `POST /ui/fleet/ID/{approve,reject,revoke}`: a session, its CSRF token and the admin scope
/// are required.
pub async fn act(
    ui: &Ui,
    peer: SocketAddr,
    headers: &HeaderMap,
    id: u64,
    action: FleetAction,
    body: &[u8],
) -> Response {
    let what = format!("fleet request {id}: {action:?}");
    let (_, form) = match ui.admin_action(peer, headers, body, &what).await {
        Ok(allowed) => allowed,
        Err(refused) => return refused,
    };
    let Some(fleet) = ui.farm.fleet().cloned() else {
        return error_page(StatusCode::NOT_FOUND, "this coordinator has no working fleet");
    };
    let reason = form
        .get("reason")
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .unwrap_or("rejected in the web UI")
        .to_owned();
    let done = tokio::task::spawn_blocking(move || -> Result<String, (StatusCode, String)> {
        let command = match action {
            FleetAction::Approve => FleetCommand::Approve { request: id },
            FleetAction::Reject => FleetCommand::Reject { request: id, reason },
            FleetAction::Revoke => {
                // Revocation goes by name: only the approved record of this request names it.
                let Ok(FleetAnswer::Nodes(nodes)) = fleet.command(FleetCommand::List) else {
                    return Err((StatusCode::INTERNAL_SERVER_ERROR, "listing failed".into()));
                };
                match nodes.into_iter().find(|n| n.request == id) {
                    Some(n) if n.state == "approved" => FleetCommand::Revoke { name: n.name },
                    Some(n) => {
                        return Err((
                            StatusCode::CONFLICT,
                            format!("request {id} is {}, not approved", n.state),
                        ));
                    }
                    None => {
                        return Err((StatusCode::NOT_FOUND, format!("no join request {id}")));
                    }
                }
            }
        };
        match fleet.command(command) {
            Ok(FleetAnswer::Done { what }) => Ok(what),
            Ok(other) => Ok(format!("{other:?}")),
            Err(e) if e.starts_with("no ") => Err((StatusCode::NOT_FOUND, e)),
            Err(e) if e.contains("not pending") => Err((StatusCode::CONFLICT, e)),
            Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e)),
        }
    })
    .await;
    match done {
        Ok(Ok(what)) => {
            tracing::info!(%peer, request = id, ?action, %what, "web UI fleet action");
            Redirect::to("/ui/fleet").into_response()
        }
        Ok(Err((status, message))) => error_page(status, &message),
        Err(e) => UiError::Task(e.to_string()).into_response(),
    }
}
