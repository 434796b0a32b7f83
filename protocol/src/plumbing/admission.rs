//! Admission of work for a daemon: [`PayloadBudget`] for the memory decompressed payloads take,
//! and [`Admission`] for connections.
//!
//! Admission of connections for a daemon that serves peers it does not trust yet: at most a
//! fixed number at once, and at most a fixed number per peer address. A connection counts as
//! idle while it has not finished its handshake or waits for its next request; when a new
//! connection would exceed a limit, the longest-idle connection (of that address, for the
//! per-address limit) is closed to make room, and the new one is refused only when none is
//! idle. Idle connections cost their owner nothing to lose (agents reconnect without blaming
//! the worker), so a flood of silent connections cannot lock out a real client, and a peer
//! cannot hold more than its share.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Who a connection comes from, for the per-peer limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP peer's address.
    Ip(std::net::IpAddr),
    /// A local socket's peer user.
    Uid(u32),
    /// Not known.
    Unknown,
}

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once.
    pub total: usize,
    /// Connections at once from one peer (address or user).
    pub per_peer: usize,
}

struct Entry {
    id: u64,
    peer: Peer,
    idle: AtomicBool,
    /// Last time it became idle (a counter: larger is more recent).
    idle_since: AtomicU64,
    evict: CancellationToken,
}

/// The connections of one listener.
pub struct Admission {
    limits: Limits,
    entries: Mutex<VecDeque<Arc<Entry>>>,
    clock: AtomicU64,
    evicted: AtomicU64,
}

/// A connection's place; the place is freed when it is dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    entry: Arc<Entry>,
}

/// Marks a connection busy (not to be evicted) while it lives.
pub struct Busy<'a>(&'a Ticket);

impl Admission {
    /// A listener's admission with `limits`.
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            entries: Mutex::default(),
            clock: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    /// Admits a connection from `peer`, closing the longest-idle connection when a limit is
    /// reached; `None` when every connection in the way is busy.
    pub fn admit(self: &Arc<Self>, peer: Peer) -> Option<Ticket> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let same = entries.iter().filter(|e| e.peer == peer).count();
        let only_peer = if same >= self.limits.per_peer {
            true
        } else if entries.len() >= self.limits.total {
            false
        } else {
            return Some(self.insert(&mut entries, peer));
        };
        let victim = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.idle.load(Ordering::Acquire))
            .filter(|(_, e)| !only_peer || e.peer == peer)
            .min_by_key(|(_, e)| e.idle_since.load(Ordering::Acquire))
            .map(|(i, _)| i)?;
        if let Some(old) = entries.remove(victim) {
            old.evict.cancel();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        Some(self.insert(&mut entries, peer))
    }

    fn insert(self: &Arc<Self>, entries: &mut VecDeque<Arc<Entry>>, peer: Peer) -> Ticket {
        let now = self.clock.fetch_add(1, Ordering::AcqRel);
        let entry = Arc::new(Entry {
            id: now,
            peer,
            idle: AtomicBool::new(true),
            idle_since: AtomicU64::new(now),
            evict: CancellationToken::new(),
        });
        entries.push_back(entry.clone());
        Ticket { admission: self.clone(), entry }
    }

    /// Connections admitted now.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether no connection is admitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Idle connections closed to make room, since the listener started.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl Ticket {
    /// Whether the connection was closed to make room.
    pub fn is_evicted(&self) -> bool {
        self.entry.evict.is_cancelled()
    }

    /// Resolves when the connection was closed to make room: its task stops serving.
    pub async fn evicted(&self) {
        self.entry.evict.cancelled().await;
    }

    /// Marks the connection busy until the guard drops (a request being served).
    pub fn busy(&self) -> Busy<'_> {
        self.entry.idle.store(false, Ordering::Release);
        Busy(self)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let now = self.0.admission.clock.fetch_add(1, Ordering::AcqRel);
        self.0.entry.idle_since.store(now, Ordering::Release);
        self.0.entry.idle.store(true, Ordering::Release);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut entries = self.admission.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = entries.iter().position(|e| e.id == self.entry.id) {
            entries.remove(i);
        }
    }
}

/// Memory for decompressed request payloads, in MiB: a node takes room here before it
/// decompresses anything a peer sent (2 MiB of lz4 can announce 512 MiB), and holds it while the
/// bytes live. Concurrent decompression bombs then cost the budget, not their sum.
pub struct PayloadBudget(tokio::sync::Semaphore);

impl PayloadBudget {
    /// A budget of `mib` MiB, at least one payload of the largest size.
    pub fn new(mib: usize) -> PayloadBudget {
        PayloadBudget(tokio::sync::Semaphore::new(mib.max(crate::payload::MAX_RAW_LEN >> 20)))
    }

    /// Waits for room for a payload announcing `raw_len` bytes; `None` when it announces more
    /// than any payload may hold.
    pub async fn room(&self, raw_len: u64) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if raw_len > crate::payload::MAX_RAW_LEN as u64 {
            return None;
        }
        let mib = u32::try_from(raw_len.div_ceil(1 << 20).max(1)).ok()?;
        self.0.acquire_many(mib).await.ok()
    }

    /// [`PayloadBudget::room`] for a request that may carry a payload
    /// ([`crate::Request::payload_raw_len`]): no room needed without one; `Err` is the refusal
    /// to answer when it announces more than any payload may hold.
    pub async fn room_for(
        &self,
        raw_len: Option<u64>,
    ) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, crate::Response> {
        let Some(len) = raw_len else { return Ok(None) };
        match self.room(len).await {
            Some(room) => Ok(Some(room)),
            None => Err(crate::Response::refused(
                crate::RefusalKind::BadRequest,
                "payload larger than any request may carry",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Peer {
        Peer::Ip(std::net::IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn the_longest_idle_makes_room_and_busy_ones_stay() {
        let a = Admission::new(Limits { total: 3, per_peer: 2 });
        let t1 = a.admit(ip(1)).expect("room");
        let t2 = a.admit(ip(1)).expect("room");
        let _b2 = t2.busy();
        // Per address: the idle one of that address goes.
        let t3 = a.admit(ip(1)).expect("t1 evicted");
        assert!(t1.entry.evict.is_cancelled());
        assert!(!t2.entry.evict.is_cancelled());
        let _b3 = t3.busy();
        // Both of 10.0.0.1 busy: a third is refused.
        assert!(a.admit(ip(1)).is_none());
        drop(t1);
        // Total: another address may evict any idle one; none is idle but its own new one.
        let t4 = a.admit(ip(2)).expect("room left");
        let _t5 = a.admit(ip(3)).expect("t4 was idle and made room");
        assert!(t4.entry.evict.is_cancelled());
        assert_eq!(a.evicted(), 2);
        assert_eq!(a.len(), 3);
    }
}
