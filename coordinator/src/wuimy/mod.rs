//! wuimy: the coordinator's web UI, served beside the build queue's API under `/ui/`.
//!
//! It owns the UI's routes and nothing of the queue or the farm: pages read [`Ops`] (the build
//! queue, its logs and blobs) and [`FarmHandle`] (the farm's status and events) and act through
//! the same store calls and event publication as the JSON API.
//!
//! - [`auth`]: sessions (login with the farm token or a tenant token, or loopback without a
//!   farm token), CSRF tokens.
//! - [`fragments`]: the parts of pages that change (farm, queue, a job's summary, history,
//!   artefacts), rendered into pages and again by the live streams.
//! - [`html`]: escaping, layout, security headers, the live-update script.
//! - [`pages`]: the farm, the queue and its batches, a job (log, history, artefacts), the
//!   published repositories; login and the operator's actions (cancel, retry, priority).
//! - [`fleet`]: the working fleet's join requests and nodes; approve, reject, revoke.
//! - [`live`]: Server-Sent Events: page fragments re-rendered as the farm and the queue change,
//!   and a job's log as it arrives.
//!
//! Pages are rendered on the server; the only script (`/ui/wuimy.js`) applies what the live
//! streams send. Every interpolated value is escaped.

pub mod auth;
pub mod fleet;
#[cfg(test)]
mod fleet_tests;
pub mod fragments;
pub mod html;
pub mod live;
pub mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::ops::{Ops, OpsError};
use crate::server::FarmHandle;
use auth::{Access, Session, Sessions};

/// What can go wrong while serving a page or an action.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// The build queue refused or failed.
    #[error(transparent)]
    Ops(#[from] OpsError),
    /// No session could be made.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// A blocking task failed.
    #[error("internal task: {0}")]
    Task(String),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::Ops(err) => err.status(),
            _ => {
                tracing::error!(err = %self, "web UI");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        error_page(status, &self.to_string())
    }
}

/// A page saying what went wrong.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let p = html::Page { title, tab: html::Tab::None, live: None, csrf: None, logged_in: false };
    let body = format!(
        "<p class=\"err\" id=\"error\">{}</p><p><a href=\"/ui/\">Back to the farm</a></p>",
        html::esc(message)
    );
    html::respond(status, html::page(&p, &body))
}

/// The UI's shared state.
pub struct Ui {
    ops: Arc<Ops>,
    farm: FarmHandle,
    sessions: Sessions,
    shutdown: CancellationToken,
}

type St = State<Arc<Ui>>;

/// The UI's routes (`/`, `/ui/…`), to merge into the API's router. Live streams end when
/// `shutdown` is cancelled, so they do not hold the server's graceful shutdown.
pub fn router(
    ops: Arc<Ops>,
    farm: FarmHandle,
    shutdown: CancellationToken,
) -> Result<Router, UiError> {
    // With a working fleet the UI is served over HTTPS only: its cookie never goes in clear.
    let sessions = Sessions::new(ops.token)?.with_secure(farm.fleet().is_some());
    let ui = Arc::new(Ui { ops, farm, sessions, shutdown });
    Ok(Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(farm_page))
        .route("/ui/queue", get(queue_page))
        .route("/ui/jobs/{id}", get(job_page))
        .route("/ui/jobs/{id}/artifacts/{name}", get(artifact))
        .route("/ui/jobs/{id}/{action}", post(act))
        .route("/ui/repos", get(repos_page))
        .route("/ui/fleet", get(fleet_page))
        .route("/ui/fleet/{id}/{action}", post(fleet_act))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/live/overview", get(live::overview))
        .route("/ui/live/jobs/{id}", get(live::job))
        .route("/ui/wuimy.js", get(script))
        .with_state(ui))
}

impl Ui {
    /// The session of a page request (made for a loopback client of a coordinator without a
    /// token), or the response that refuses it.
    fn viewer(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<(Session, Option<HeaderValue>), Denied> {
        match self.sessions.access(peer, headers, true) {
            Access::Session { session, set_cookie } => Ok((session, set_cookie)),
            Access::Login => Err(Denied::Login),
            Access::Refused => Err(Denied::Refused),
        }
    }

    /// The session of an action or a live stream; never made here.
    fn session(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<Session, Denied> {
        match self.sessions.access(peer, headers, false) {
            Access::Session { session, .. } => Ok(session),
            Access::Login => Err(Denied::Unauthorized),
            Access::Refused => Err(Denied::Refused),
        }
    }

    /// Whether the tenant token a session was made from (if any) is still live; a session of a
    /// revoked or expired token ends here.
    async fn token_live(&self, session: &Session) -> bool {
        let Some(id) = session.tenant else { return true };
        let live = self
            .ops
            .db(move |db, _| {
                Ok(db.tokens().token_get(id)?.is_some_and(|t| t.info.is_live(crate::ops::now())))
            })
            .await;
        match live {
            Ok(true) => return true,
            Ok(false) => {}
            Err(err) => tracing::warn!(%err, token = id, "web UI: reading a token failed"),
        }
        self.sessions.remove(&session.id);
        false
    }

    /// The session and form fields of an operator's action (`POST`), or the refusal: a live
    /// session, its CSRF token and the admin scope are required. `what` names the action in
    /// the log.
    async fn admin_action(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        body: &[u8],
        what: &str,
    ) -> Result<(Session, HashMap<String, String>), Response> {
        let session = match self.session(peer, headers) {
            Ok(s) if self.token_live(&s).await => s,
            Ok(_) => return Err(Denied::Unauthorized.into_response()),
            Err(denied) => return Err(denied.into_response()),
        };
        let form = auth::form_fields(body);
        if !self.sessions.csrf_ok(&session, form.get("csrf").map(String::as_str), headers) {
            tracing::warn!(%peer, what, "web UI action refused: missing or wrong CSRF token");
            return Err(error_page(StatusCode::FORBIDDEN, "missing or wrong CSRF token"));
        }
        if !session.admin {
            tracing::warn!(%peer, what, "web UI action refused: no admin scope");
            return Err(error_page(StatusCode::FORBIDDEN, "the token lacks the admin scope"));
        }
        Ok((session, form))
    }
}

/// Why a request is not served.
#[derive(Debug, Clone, Copy)]
pub enum Denied {
    /// A page: log in first (redirected to the login form).
    Login,
    /// An action or a stream without a session: 401.
    Unauthorized,
    /// No farm token configured and the client is not on loopback: 403.
    Refused,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Login => Redirect::to("/ui/login").into_response(),
            Denied::Unauthorized => error_page(StatusCode::UNAUTHORIZED, "log in first"),
            Denied::Refused => error_page(
                StatusCode::FORBIDDEN,
                "this coordinator has no farm token: only clients on its own host (loopback) are \
                 served",
            ),
        }
    }
}

/// `resp`, with the cookie of a session just made.
fn with_cookie(mut resp: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(cookie) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    resp
}

fn render(result: Result<String, UiError>, cookie: Option<HeaderValue>) -> Response {
    match result {
        Ok(page) => with_cookie(html::respond(StatusCode::OK, page), cookie),
        Err(err) => err.into_response(),
    }
}

/// Who is looking at a page: their session, and the cookie to set when it is new. Extracted
/// before a page's handler runs; a visitor who must log in (or is refused) never reaches it.
struct Viewer(Session, Option<HeaderValue>);

impl axum::extract::FromRequestParts<Arc<Ui>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ui: &Arc<Ui>,
    ) -> Result<Viewer, Response> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        match ui.viewer(peer, &parts.headers) {
            Ok((session, cookie)) if ui.token_live(&session).await => Ok(Viewer(session, cookie)),
            Ok(_) => Err(Denied::Login.into_response()),
            Err(denied) => Err(denied.into_response()),
        }
    }
}

async fn farm_page(State(ui): St, Viewer(session, cookie): Viewer) -> Response {
    render(pages::farm(&ui, &session).await, cookie)
}

async fn queue_page(State(ui): St, Viewer(session, cookie): Viewer) -> Response {
    render(pages::queue(&ui, &session).await, cookie)
}

#[derive(serde::Deserialize)]
struct AttemptQuery {
    attempt: Option<u32>,
}

async fn job_page(
    State(ui): St,
    Viewer(session, cookie): Viewer,
    Path(id): Path<u64>,
    Query(q): Query<AttemptQuery>,
) -> Response {
    render(pages::job(&ui, &session, id, q.attempt).await, cookie)
}

async fn repos_page(State(ui): St, Viewer(session, cookie): Viewer) -> Response {
    render(pages::repos(&ui, &session).await, cookie)
}

async fn fleet_page(State(ui): St, Viewer(session, cookie): Viewer) -> Response {
    render(fleet::fleet_page(&ui, &session).await, cookie)
}

/// `POST /ui/fleet/ID/{approve,reject,revoke}`.
async fn fleet_act(
    State(ui): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((id, action)): Path<(u64, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(action) = fleet::FleetAction::parse(&action) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    fleet::act(&ui, peer, &h, id, action, &body).await
}

async fn artifact(
    State(ui): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((id, name)): Path<(u64, String)>,
) -> Response {
    match ui.session(peer, &h) {
        Ok(session) if ui.token_live(&session).await => {}
        Ok(_) => return Denied::Unauthorized.into_response(),
        Err(denied) => return denied.into_response(),
    }
    match pages::artifact(&ui, id, &name).await {
        Ok(resp) => resp,
        Err(err) => err.into_response(),
    }
}

/// `POST /ui/jobs/ID/{cancel,retry,priority}`.
async fn act(
    State(ui): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((id, action)): Path<(u64, String)>,
    body: axum::body::Bytes,
) -> Response {
    let action = match action.as_str() {
        "cancel" => pages::Action::Cancel,
        "retry" => pages::Action::Retry,
        "priority" => pages::Action::Priority,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    pages::act(&ui, peer, &h, id, action, &body).await
}

async fn login_page(State(ui): St) -> Response {
    pages::login_form(&ui, StatusCode::OK, None)
}

async fn login(
    State(ui): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    pages::login(&ui, peer, &h, &body).await
}

async fn logout(
    State(ui): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let session = match ui.session(peer, &h) {
        Ok(s) => s,
        Err(denied) => return denied.into_response(),
    };
    let form = auth::form_fields(&body);
    if !ui.sessions.csrf_ok(&session, form.get("csrf").map(String::as_str), &h) {
        return error_page(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    let clear = ui.sessions.remove(&session.id);
    with_cookie(Redirect::to("/ui/login").into_response(), Some(clear))
}

async fn script() -> Response {
    let mut resp = html::SCRIPT.into_response();
    let headers = resp.headers_mut();
    headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    html::secure_headers(headers);
    resp
}
