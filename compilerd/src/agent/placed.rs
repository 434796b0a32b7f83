//! The agent's side of a coordinated farm: running a unit where the coordinator placed it, and
//! running it on a second node too when the coordinator hedges it (its first node stalled, or
//! was lost while the unit's connection hung open); the first decisive answer is kept.

use discomy_protocol::coordinator::{JobDone, Placement};
use discomy_protocol::{RefusalKind, Response, SourceResult};
use tracing::{info, warn};

use super::{State, TransportError, Unit, exchange, key_owner, keyed_request, supply};
use crate::agent::pool::Lease;
use crate::coord::client::{CoordClient, Placed, Unplaced};

/// Runs a unit where the coordinator places it. [`Unplaced::Away`]: no coordinator answers now
/// (the caller places the unit on the remembered workers); [`Unplaced::Late`]: no node for it,
/// no answer in time, or every placement failed (the caller falls back to the host list, then
/// to local compiles).
pub(super) async fn forward_placed(
    state: &State,
    coord: &CoordClient,
    unit: &Unit,
) -> Result<Response, Unplaced> {
    for _ in 0..state.config.max_attempts {
        let placed = coord
            .place(unit.toolchain, unit.bytes_in, unit.work, unit.key, state.config.queue_timeout)
            .await?;
        if placed.placement.worker.is_none() {
            return Err(Unplaced::Late);
        }
        let (done, outcome) = run_hedged(state, coord, unit, placed).await;
        coord.done(done);
        match outcome {
            Ok(
                response @ (Response::Compiled(_)
                | Response::CompiledSources(_)
                | Response::CacheHit(_)),
            ) => {
                return Ok(response);
            }
            Ok(Response::Refused(refusal)) if !retryable(refusal.kind) => {
                return Ok(Response::Refused(refusal));
            }
            Ok(Response::Refused(_)) => {}
            Ok(other) => warn!(source = %unit.source, "worker answered out of turn: {other:?}"),
            Err(reason) => {
                warn!(source = %unit.source, %reason, "placed worker failed; asking again")
            }
        }
    }
    Err(Unplaced::Late)
}

/// A refusal another node may not give (a node failing inside is one).
fn retryable(kind: RefusalKind) -> bool {
    matches!(kind, RefusalKind::NoToolchain | RefusalKind::Unavailable | RefusalKind::Internal)
}

/// An answer that ends the unit (no other copy's answer could be better).
fn decisive(outcome: &Result<Response, TransportError>) -> bool {
    match outcome {
        Ok(Response::Compiled(_) | Response::CompiledSources(_) | Response::CacheHit(_)) => true,
        Ok(Response::Refused(r)) => !retryable(r.kind),
        _ => false,
    }
}

/// Runs a placed unit; when the coordinator hedges it (its node stalled), runs it on the twin's
/// node too and keeps the first decisive answer. Both copies compile the same files with the
/// same compiler, so either object is the object. The copy not kept is reported here as not
/// run; the one returned is for the caller to report.
async fn run_hedged(
    state: &State,
    coord: &CoordClient,
    unit: &Unit,
    mut placed: Placed<'_>,
) -> (JobDone, Result<Response, TransportError>) {
    let first = attempt(state, unit, &placed.placement);
    tokio::pin!(first);
    let twin = tokio::select! {
        outcome = &mut first => return outcome,
        Ok(twin) = &mut placed.hedge => twin,
    };
    info!(
        source = %unit.source,
        from = placed.placement.worker.as_deref().unwrap_or("?"),
        to = twin.worker.as_deref().unwrap_or("?"),
        "placed node stalled; running the unit on a second node too"
    );
    let second = attempt(state, unit, &twin);
    tokio::pin!(second);
    let (winner, first_won) = tokio::select! {
        a = &mut first => (a, true),
        b = &mut second => (b, false),
    };
    let other_job = if first_won { twin.job } else { placed.placement.job };
    let decisive = decisive(&winner.1);
    // Each job is reported once: the copy not kept here, the one returned by the caller. (A
    // unit placed again after its node was lost has one job for both copies.)
    if other_job != winner.0.job {
        coord.done(if decisive { not_run(other_job) } else { winner.0 });
    }
    if decisive {
        return winner;
    }
    // The first answer was a failure: the other copy decides.
    if first_won { second.await } else { first.await }
}

fn not_run(job: u64) -> JobDone {
    JobDone { job, ok: false, wall_ms: 0, cpu_ms: 0, bytes_out: 0 }
}

/// One placement of a unit: the exchange with its worker, and what to tell the coordinator.
async fn attempt(
    state: &State,
    unit: &Unit,
    placement: &Placement,
) -> (JobDone, Result<Response, TransportError>) {
    let mut done = not_run(placement.job);
    let spec = match placement.worker.as_deref().map(crate::hosts::parse_host_list) {
        Some(Ok(mut hosts)) if hosts.len() == 1 => hosts.remove(0),
        other => return (done, Err(TransportError::Placement(format!("{other:?}")))),
    };
    let address = spec.address();
    if state.verifier.is_quarantined(&address) {
        let why = format!("{address} is quarantined");
        return (done, Err(TransportError::Placement(why)));
    }
    let started = std::time::Instant::now();
    let lease = Lease { host: usize::MAX, spec, conn: None };
    // The agent asked the farm tier before placing; the worker still stores what it makes.
    let request = keyed_request(unit, key_owner(state, unit), &address);
    let answered = match exchange(state, lease, &request).await {
        Ok((answer, mut conn)) => supply(state, &mut conn, unit, &request, answer).await,
        Err(e) => Err(e),
    };
    let (mut exchanged, took) = match answered {
        Ok(answer) => (Ok(answer.response), Some(answer.took)),
        Err(e) => (Err(e), None),
    };
    if let Ok(response) = &mut exchanged {
        super::verify::stamp_node(response, &address);
    }
    done.wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if let Ok(Response::Compiled(result) | Response::CompiledSources(SourceResult { result, .. })) =
        &exchanged
    {
        done.ok = true;
        // The node's time as this agent measured it (see `Answer`), not its `compile_ms`.
        done.cpu_ms =
            took.map_or(done.wall_ms, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        done.bytes_out = result.output.as_ref().map_or(0, |o| o.raw_len);
    }
    (done, exchanged)
}
