//! Live updates over Server-Sent Events. A stream is a task per open page: it waits for the
//! farm's or the queue's events (or a timer), re-renders the page's fragments and sends those
//! that changed as `html` events; a job page's stream also follows the attempt's log file and
//! sends new whole lines as `log` events (their SSE id, `ATTEMPT:OFFSET`, lets a reconnecting
//! browser resume without repeating lines). A stream ends when its page goes away or the
//! coordinator shuts down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use discomy_protocol::ops::JobView;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::auth::Session;
use super::{Ui, fragments, html, pages};
use crate::ops::now;

/// Events arriving within this pause after the first are rendered together.
const COALESCE: Duration = Duration::from_millis(50);
/// How often a running job's log file is looked at.
const LOG_POLL: Duration = Duration::from_millis(400);
/// The most log bytes read (and sent) at once.
const LOG_CHUNK: u64 = 256 << 10;
/// Fragments with relative times ("3m ago") are re-rendered at least this often.
const REFRESH: Duration = Duration::from_secs(5);

/// The response streaming what `rx` receives.
fn sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    html::secure_headers(resp.headers_mut());
    resp
}

fn html_event(id: &str, html: &str) -> Option<Event> {
    Event::default().event("html").json_data(serde_json::json!({"id": id, "html": html})).ok()
}

/// Waits for the next event of `rx`: `Some` event, or `None` when some were lost (the caller
/// re-reads everything either way). A closed channel never answers.
async fn next<T: Clone>(rx: &mut broadcast::Receiver<T>) -> Option<T> {
    match rx.recv().await {
        Ok(t) => Some(t),
        Err(broadcast::error::RecvError::Lagged(_)) => None,
        Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
    }
}

/// Whether anything is waiting in `rx` (read and dropped).
fn drain<T: Clone>(rx: &mut broadcast::Receiver<T>) -> bool {
    let mut any = false;
    loop {
        match rx.try_recv() {
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => any = true,
            Err(_) => return any,
        }
    }
}

/// Which overview page a stream feeds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// `/ui/`: the `farm` fragment.
    Farm,
    /// `/ui/queue`: the `queue` fragment.
    Queue,
}

/// `?view=`.
#[derive(Deserialize)]
pub struct OverviewQuery {
    view: View,
}

/// `GET /ui/live/overview?view=farm|queue`.
pub async fn overview(
    State(ui): State<Arc<Ui>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<OverviewQuery>,
) -> Response {
    if let Err(denied) = ui.session(peer, &headers) {
        return denied.into_response();
    }
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(overview_task(ui, q.view, tx));
    sse(rx)
}

async fn overview_task(ui: Arc<Ui>, view: View, tx: mpsc::Sender<Event>) {
    let mut farm_rx = ui.farm.subscribe();
    let mut jobs_rx = ui.ops.subscribe();
    let mut last = String::new();
    let mut jobs: Vec<JobView> = Vec::new();
    let mut jobs_at: Option<Instant> = None;
    loop {
        if jobs_at.is_some() {
            let mut jobs_changed = false;
            tokio::select! {
                _ = ui.shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = next(&mut farm_rx) => {}
                _ = next(&mut jobs_rx) => jobs_changed = true,
            }
            tokio::time::sleep(COALESCE).await;
            drain(&mut farm_rx);
            if drain(&mut jobs_rx) || jobs_changed {
                jobs_at = None;
            }
        }
        if jobs_at.is_none_or(|at| at.elapsed() >= REFRESH) {
            match pages::all_jobs(&ui.ops).await {
                Ok(all) => jobs = all,
                Err(err) => tracing::warn!(%err, "web UI: the queue could not be read"),
            }
            jobs_at = Some(Instant::now());
        }
        let (id, html) = match view {
            View::Farm => ("farm", fragments::farm(&ui.farm.status(), &jobs, now())),
            View::Queue => ("queue", fragments::queue(&jobs, now())),
        };
        if html != last {
            let Some(event) = html_event(id, &html) else { continue };
            if tx.send(event).await.is_err() {
                return;
            }
            last = html;
        }
    }
}

/// Where the job page's log stands.
#[derive(Deserialize)]
pub struct JobQuery {
    attempt: u32,
    #[serde(default)]
    offset: u64,
    /// The page follows the job's current attempt: a new attempt reloads it.
    #[serde(default)]
    follow: Option<u8>,
}

/// `GET /ui/live/jobs/ID?attempt=N&offset=O[&follow=1]`.
pub async fn job(
    State(ui): State<Arc<Ui>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(mut q): Query<JobQuery>,
) -> Response {
    let session = match ui.session(peer, &headers) {
        Ok(s) => s,
        Err(denied) => return denied.into_response(),
    };
    // A reconnecting EventSource says where it stopped.
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| {
        let (a, o) = v.split_once(':')?;
        Some((a.parse::<u32>().ok()?, o.parse::<u64>().ok()?))
    });
    if let Some((attempt, offset)) = resume
        && attempt == q.attempt
    {
        q.offset = offset;
    }
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(job_task(ui, session, id, q, tx));
    sse(rx)
}

async fn job_task(ui: Arc<Ui>, session: Session, id: u64, q: JobQuery, tx: mpsc::Sender<Event>) {
    let mut rx = ui.ops.subscribe();
    let (attempt, mut offset, follow) = (q.attempt, q.offset, q.follow == Some(1));
    let mut last: [String; 3] = Default::default();
    let mut refresh = true;
    let mut refreshed = Instant::now();
    let mut complete = false;
    loop {
        if refresh || refreshed.elapsed() >= REFRESH {
            refresh = false;
            refreshed = Instant::now();
            let detail =
                ui.ops.db(move |db, _| Ok((db.job(id)?, db.events(Some(id), 0, 100_000)?))).await;
            let (job, events) = match detail {
                Ok(d) => d,
                Err(err) => {
                    tracing::debug!(%err, job = id, "web UI: the job could not be read");
                    return;
                }
            };
            if follow && job.attempt != attempt {
                let _ = tx.send(Event::default().event("reload").data("attempt")).await;
                return;
            }
            complete = job.state.is_final() || job.attempt != attempt;
            let t = now();
            let fresh = [
                fragments::job_summary(&job, t, &session.csrf),
                fragments::job_history(&events),
                fragments::job_artifacts(&job),
            ];
            for (i, (html, target)) in
                fresh.into_iter().zip(["job-summary", "job-history", "job-artifacts"]).enumerate()
            {
                if html != last[i] {
                    let Some(event) = html_event(target, &html) else { continue };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                    last[i] = html;
                }
            }
        }
        let ops = Arc::clone(&ui.ops);
        let read =
            tokio::task::spawn_blocking(move || ops.logs.read_from(id, attempt, offset, LOG_CHUNK))
                .await;
        let chunk = match read {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(err)) => {
                tracing::debug!(%err, job = id, "web UI: the log could not be read");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let n = pages::whole_lines(&chunk, complete);
        if n > 0 {
            offset += n as u64;
            let text = String::from_utf8_lossy(&chunk[..n]);
            let event = Event::default()
                .event("log")
                .id(format!("{attempt}:{offset}"))
                .json_data(serde_json::json!({"text": text, "offset": offset}));
            if let Ok(event) = event
                && tx.send(event).await.is_err()
            {
                return;
            }
            if chunk.len() as u64 == LOG_CHUNK {
                continue;
            }
        }
        let pause = if complete { REFRESH } else { LOG_POLL };
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = ui.shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = &mut sleep => break,
                event = next(&mut rx) => match event {
                    Some(e) if e.job != id => continue,
                    _ => {
                        refresh = true;
                        break;
                    }
                },
            }
        }
    }
}
