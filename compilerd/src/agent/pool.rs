//! The agent's view of its workers: slots in flight, backoff after failures, idle connections.
//!
//! Placement is distcc's spread-first rule refined by load: among hosts that are not in backoff
//! and have a free slot, take the one with the lowest fill (in flight / limit), list order
//! breaking ties. When every usable host is full the unit waits for a slot instead of failing.
//! A pool of remembered workers ([`Pool::weighted`]) divides the fill by each host's relative
//! speed, so a faster host takes more units before a slower one is preferred.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use discomy_protocol::asyncio::Conn;
use discomy_protocol::tls::FarmStream;
use tokio::sync::Notify;

use crate::hosts::HostSpec;

/// Idle connections older than this are not reused (the worker may have closed them).
const IDLE_REUSE: Duration = Duration::from_secs(60);

struct Host {
    spec: HostSpec,
    in_flight: usize,
    backoff_until: Option<Instant>,
    idle: Vec<(Instant, Conn<FarmStream>)>,
    compiled: u64,
    failed: u64,
    /// Verification caught it returning a wrong object: never used again.
    quarantined: bool,
    /// Relative speed (1: the pool's typical host); the fill is divided by it.
    weight: f64,
}

/// A slot on a host, taken with [`Pool::acquire`]; give it back with [`Pool::release`].
pub struct Lease {
    /// Index of the host in the pool.
    pub host: usize,
    /// The host.
    pub spec: HostSpec,
    /// A reusable connection, if one was idle.
    pub conn: Option<Conn<FarmStream>>,
}

/// How a lease ended.
pub enum Release {
    /// The exchange worked; keep the connection for reuse.
    Ok(Conn<FarmStream>),
    /// The host answered but will not take this unit; no penalty.
    Declined(Option<Conn<FarmStream>>),
    /// The host failed (connect, transport, protocol): back off from it.
    Failed,
    /// The exchange worked on a connection that is not kept (distccd: one job per connection).
    Finished,
}

/// The agent's hosts.
pub struct Pool {
    hosts: Mutex<Vec<Host>>,
    changed: Notify,
    backoff: Duration,
}

impl Pool {
    /// A pool over `specs`, backing off `backoff` after a failure.
    pub fn new(specs: Vec<HostSpec>, backoff: Duration) -> Pool {
        Pool::weighted(specs.into_iter().map(|spec| (spec, 1.0)).collect(), backoff)
    }

    /// A pool over hosts with their relative speeds (finite and positive; anything else is 1).
    pub fn weighted(specs: Vec<(HostSpec, f64)>, backoff: Duration) -> Pool {
        let hosts = specs
            .into_iter()
            .map(|(spec, weight)| Host {
                weight: if weight.is_finite() && weight > 0.0 { weight } else { 1.0 },
                spec,
                in_flight: 0,
                backoff_until: None,
                idle: Vec::new(),
                compiled: 0,
                failed: 0,
                quarantined: false,
            })
            .collect();
        Pool { hosts: Mutex::new(hosts), changed: Notify::new(), backoff }
    }

    /// Takes a slot on the best host not in `skip`; waits while all usable hosts are full.
    /// `None` when no host is usable at all (all skipped or in backoff), or after `max_wait`.
    pub async fn acquire(&self, skip: &[usize], max_wait: Duration) -> Option<Lease> {
        let deadline = Instant::now() + max_wait;
        loop {
            let notified = self.changed.notified();
            match self.try_acquire(skip) {
                Ok(lease) => return Some(lease),
                Err(false) => return None,
                Err(true) => {}
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            // Re-check periodically too: backoff periods end without a notification.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(250)), notified).await;
        }
    }

    /// `Err(true)`: usable hosts exist but are full; `Err(false)`: nothing usable.
    fn try_acquire(&self, skip: &[usize]) -> Result<Lease, bool> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut any_usable = false;
        let mut best: Option<(usize, f64)> = None;
        for (i, h) in hosts.iter_mut().enumerate() {
            if skip.contains(&i) || h.quarantined {
                continue;
            }
            if h.backoff_until.is_some_and(|t| t > now) {
                continue;
            }
            h.backoff_until = None;
            any_usable = true;
            if h.in_flight >= h.spec.limit {
                continue;
            }
            let fill = h.in_flight as f64 / (h.spec.limit as f64 * h.weight);
            if best.is_none_or(|(_, f)| fill < f) {
                best = Some((i, fill));
            }
        }
        let Some((i, _)) = best else { return Err(any_usable) };
        let host = &mut hosts[i];
        host.in_flight += 1;
        // A worker revoked since it served the connection is not asked again on it.
        host.idle.retain(|(t, c)| {
            now.duration_since(*t) < IDLE_REUSE && !crate::fleet::peer_revoked(c.get_ref())
        });
        let conn = host.idle.pop().map(|(_, c)| c);
        Ok(Lease { host: i, spec: host.spec.clone(), conn })
    }

    /// Gives a slot back.
    pub fn release(&self, host: usize, how: Release) {
        {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = hosts.get_mut(host) {
                h.in_flight = h.in_flight.saturating_sub(1);
                match how {
                    Release::Ok(conn) => {
                        h.compiled += 1;
                        if h.idle.len() < h.spec.limit {
                            h.idle.push((Instant::now(), conn));
                        }
                    }
                    Release::Declined(conn) => {
                        if let Some(conn) = conn.filter(|_| h.idle.len() < h.spec.limit) {
                            h.idle.push((Instant::now(), conn));
                        }
                    }
                    Release::Finished => h.compiled += 1,
                    Release::Failed => {
                        h.failed += 1;
                        h.idle.clear();
                        h.backoff_until = Some(Instant::now() + self.backoff);
                    }
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Never uses the host at `address` again (verification caught it returning a wrong
    /// object); its idle connections are closed.
    pub fn quarantine(&self, address: &str) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        for h in hosts.iter_mut().filter(|h| h.spec.address() == address) {
            h.quarantined = true;
            h.idle.clear();
        }
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// Whether the pool has no hosts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(host, compiled, failed)` per host, for logs.
    pub fn counters(&self) -> Vec<(String, u64, u64)> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.iter().map(|h| (h.spec.address(), h.compiled, h.failed)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &str, limit: usize) -> HostSpec {
        HostSpec { host: host.into(), port: 1, limit, kind: Default::default() }
    }

    #[tokio::test]
    async fn spreads_then_fills_then_waits() {
        let pool = Pool::new(vec![spec("a", 2), spec("b", 1)], Duration::from_secs(60));
        let l1 = pool.acquire(&[], Duration::ZERO).await.unwrap();
        let l2 = pool.acquire(&[], Duration::ZERO).await.unwrap();
        assert_eq!((l1.host, l2.host), (0, 1));
        let l3 = pool.acquire(&[], Duration::ZERO).await.unwrap();
        assert_eq!(l3.host, 0);
        // Full: a short wait gives nothing.
        assert!(pool.acquire(&[], Duration::from_millis(10)).await.is_none());
        pool.release(l2.host, Release::Declined(None));
        assert_eq!(pool.acquire(&[], Duration::from_millis(10)).await.unwrap().host, 1);
        pool.release(l1.host, Release::Declined(None));
        pool.release(l3.host, Release::Declined(None));
    }

    #[tokio::test]
    async fn failed_hosts_back_off_and_skips_are_honoured() {
        let pool = Pool::new(vec![spec("a", 1), spec("b", 1)], Duration::from_secs(60));
        let l = pool.acquire(&[], Duration::ZERO).await.unwrap();
        assert_eq!(l.host, 0);
        pool.release(0, Release::Failed);
        let l = pool.acquire(&[], Duration::ZERO).await.unwrap();
        assert_eq!(l.host, 1);
        pool.release(1, Release::Declined(None));
        assert!(pool.acquire(&[1], Duration::from_millis(10)).await.is_none());
    }

    #[tokio::test]
    async fn faster_hosts_fill_first() {
        let pool = Pool::weighted(
            vec![(spec("slow", 4), 0.5), (spec("fast", 4), 2.0)],
            Duration::from_secs(60),
        );
        let mut hosts = Vec::new();
        for _ in 0..5 {
            hosts.push(pool.acquire(&[], Duration::ZERO).await.unwrap().host);
        }
        // Both idle: list order; then the fast host until its fill passes the slow one's.
        assert_eq!(hosts, vec![0, 1, 1, 1, 1]);
    }
}
