//! The daemon's shared state: the policy's [`Scheduler`] plus what the policy does not know
//! (node addresses, which agent connection waits for which job), behind one mutex; and what it
//! tells watchers: [`FarmEvent`]s for live views (web UI, icemon) and [`FarmCounters`] for
//! `/metrics`.

use std::collections::{BTreeSet, HashMap};

use discomy_protocol::coordinator::{
    CoordResponse, FarmStatus, NodeStatus, Placement, SubmitterStatus,
};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{broadcast, mpsc};

use crate::policy::{Clock, IdMap, JobId, MonotonicClock, NodeId, Scheduler};

/// Most units one agent connection may have queued or placed at once: beyond, a unit is
/// answered at once with no worker (its agent uses its host list, or the wrapper compiles
/// locally), so one agent cannot grow the coordinator's queue without bound.
pub const MAX_JOBS_PER_AGENT: usize = 65_536;

/// Most quarantined addresses remembered (a token holder could send any number).
pub const MAX_QUARANTINED: usize = 4096;

/// Where the answers for one agent connection go.
pub type AgentTx = mpsc::UnboundedSender<CoordResponse>;

/// What happens on the farm, for live views (the web UI's farm page, icemon). Lagging receivers
/// lose events (a bounded broadcast): a view re-reads [`Core::status`] when it lags.
#[derive(Debug, Clone, PartialEq)]
pub enum FarmEvent {
    /// A node logged in.
    NodeJoined {
        /// The coordinator's id for it.
        node: NodeId,
        /// Its host id.
        host: String,
        /// Its worker address.
        address: String,
        /// Its slots.
        slots: u32,
    },
    /// A node left the farm (connection closed, silent, replaced or quarantined).
    NodeLeft {
        /// The coordinator's id for it.
        node: NodeId,
    },
    /// A unit was placed on a node (a hedge twin too).
    UnitPlaced {
        /// The placement's job id.
        job: JobId,
        /// Where it goes.
        node: NodeId,
        /// The build host that asked.
        submitter: String,
    },
    /// A placed unit ended (its agent's `Done`).
    UnitDone {
        /// The placement's job id.
        job: JobId,
        /// Whether the worker compiled it.
        ok: bool,
        /// Ask-to-answer wall time at the agent.
        wall_ms: u64,
    },
}

/// Events kept for slow receivers before they lag.
const EVENT_BACKLOG: usize = 4096;

/// The coordinator's own counts since it started, for `/metrics` (the rest comes from
/// [`Core::status`]).
#[derive(Debug, Clone)]
pub struct FarmCounters {
    /// Units agents asked to place.
    pub asked: u64,
    /// Of those, answered with a worker.
    pub placed: u64,
    /// Of those, answered with none (no node, or the agent's bound reached).
    pub no_worker: u64,
    /// Units that ended with their worker's object, and without.
    pub done_ok: u64,
    /// Units that ended without an object.
    pub done_failed: u64,
    /// Seconds from an agent's ask to its placement.
    pub queue_wait: Histogram,
}

impl Default for FarmCounters {
    fn default() -> FarmCounters {
        FarmCounters {
            asked: 0,
            placed: 0,
            no_worker: 0,
            done_ok: 0,
            done_failed: 0,
            queue_wait: Histogram::new(discomy_protocol::plumbing::metrics::LATENCY_BUCKETS),
        }
    }
}

/// An agent's job: where its answers go, and whether it has had its placement yet.
struct Asked {
    tag: u64,
    agent: u64,
    tx: AgentTx,
    /// When the agent asked (the clock's milliseconds).
    asked_at: u64,
    /// `Placed` went out: a later placement of the same job (its node was lost) goes as a
    /// `Hedge`, since the agent may still be waiting on the lost node.
    answered: bool,
}

/// Everything behind the daemon's mutex.
pub struct Core {
    /// The placement policy.
    pub sched: Scheduler,
    /// Its clock.
    pub clock: MonotonicClock,
    /// Farm name.
    pub farm: String,
    addresses: HashMap<NodeId, String>,
    /// Every job an agent asked for (twins included), queued or placed, until its `Done` or
    /// its agent's connection ends.
    asked: IdMap<Asked>,
    next_id: u64,
    /// Twins delivered to agents (`discomy status`'s `hedged`).
    hedged: u64,
    /// Nodes that left the farm (`nodes_lost`).
    nodes_lost: u64,
    /// Worker addresses an agent's verification caught returning a wrong object.
    quarantined: BTreeSet<String>,
    /// Entries of `asked` per agent connection (bounded by [`MAX_JOBS_PER_AGENT`]).
    per_agent: HashMap<u64, usize>,
    /// Live views' feed.
    events: broadcast::Sender<FarmEvent>,
    /// Counts for `/metrics`.
    pub counters: FarmCounters,
}

impl Core {
    /// An empty farm.
    pub fn new(farm: String, sched: Scheduler) -> Core {
        Core {
            sched,
            clock: MonotonicClock::default(),
            farm,
            addresses: HashMap::new(),
            asked: IdMap::default(),
            next_id: 0,
            hedged: 0,
            nodes_lost: 0,
            quarantined: BTreeSet::new(),
            per_agent: HashMap::new(),
            events: broadcast::channel(EVENT_BACKLOG).0,
            counters: FarmCounters::default(),
        }
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FarmEvent> {
        self.events.subscribe()
    }

    /// Whether a live view listens (events are only made for one: a placement is the
    /// coordinator's hot path).
    fn watched(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Tells live views (nobody listening is fine).
    fn emit(&self, event: FarmEvent) {
        let _ = self.events.send(event);
    }

    /// The quarantined worker addresses, sorted.
    pub fn quarantined(&self) -> Vec<String> {
        self.quarantined.iter().cloned().collect()
    }

    /// A node logged in: the policy learns it and live views see it.
    pub fn add_node(&mut self, node: NodeId, spec: crate::policy::NodeSpec, address: String) {
        let now = self.clock.now();
        if self.watched() {
            let (host, slots) = (spec.host.clone(), spec.slots);
            self.emit(FarmEvent::NodeJoined { node, host, address: address.clone(), slots });
        }
        self.sched.add_node(node, spec, now);
        self.set_address(node, address);
        self.dispatch();
    }

    /// A fresh id for a node or agent connection.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Remembers a node's verified address.
    pub fn set_address(&mut self, node: NodeId, address: String) {
        self.addresses.insert(node, address);
    }

    /// Nodes registered at `address`.
    pub fn nodes_at(&self, address: &str) -> Vec<NodeId> {
        self.addresses.iter().filter(|(_, a)| *a == address).map(|(id, _)| *id).collect()
    }

    /// Quarantines the worker at `address` (an agent's verification caught it returning a
    /// wrong object): its nodes leave the farm, their jobs placed again, and it may not log in
    /// again. Returns the nodes that left, whose connections the caller closes.
    pub fn quarantine(&mut self, address: &str) -> Vec<NodeId> {
        if self.quarantined.len() >= MAX_QUARANTINED && !self.quarantined.contains(address) {
            return Vec::new();
        }
        self.quarantined.insert(address.to_owned());
        let gone = self.nodes_at(address);
        for &node in &gone {
            self.node_gone(node);
        }
        gone
    }

    /// Whether the worker at `address` is quarantined.
    pub fn is_quarantined(&self, address: &str) -> bool {
        self.quarantined.contains(address)
    }

    /// A node is gone. Its placed jobs are placed again and each new placement goes to the
    /// job's agent as a hedge: an agent whose connection to the node failed has asked again
    /// already (and its `Done` for the old job withdraws the copy), but one whose connection
    /// stays open and silent (a stopped or cut-off host) would wait for its unit limit.
    pub fn node_gone(&mut self, node: NodeId) {
        self.nodes_lost += 1;
        let now = self.clock.now();
        if self.addresses.remove(&node).is_some() && self.watched() {
            self.emit(FarmEvent::NodeLeft { node });
        }
        for job in self.sched.node_lost(node, now) {
            // Requeued jobs keep their entry; jobs whose twin runs elsewhere were dropped.
            if !self.sched.is_queued(job) {
                self.forget(job);
                self.sched.cancel(job);
            }
        }
        self.dispatch();
    }

    /// Queues one unit for an agent; the caller dispatches (once per batch of requests).
    pub fn place(&mut self, agent: u64, tag: u64, spec: crate::policy::JobSpec, tx: &AgentTx) {
        self.counters.asked += 1;
        if self.sched.node_count() == 0
            || self.per_agent.get(&agent).is_some_and(|n| *n >= MAX_JOBS_PER_AGENT)
        {
            self.counters.no_worker += 1;
            let _ = tx.send(CoordResponse::Placed(Placement { tag, job: 0, worker: None }));
            return;
        }
        let job = self.sched.submit(spec);
        let asked_at = self.clock.now();
        self.remember(job, Asked { tag, agent, tx: tx.clone(), asked_at, answered: false });
    }

    fn remember(&mut self, job: JobId, asked: Asked) {
        *self.per_agent.entry(asked.agent).or_insert(0) += 1;
        self.asked.insert(job, asked);
    }

    fn forget(&mut self, job: JobId) {
        let Some(asked) = self.asked.remove(&job) else { return };
        if let Some(n) = self.per_agent.get_mut(&asked.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_agent.remove(&asked.agent);
            }
        }
    }

    /// A unit ended; the caller dispatches (once per batch of requests).
    pub fn done(&mut self, agent: u64, job: JobId, stats: crate::policy::JobStats) {
        if self.asked.get(&job).is_none_or(|a| a.agent != agent) {
            return; // not this agent's job (or already cancelled): ignore, do not learn
        }
        self.forget(job);
        match stats.ok {
            true => self.counters.done_ok += 1,
            false => self.counters.done_failed += 1,
        }
        if self.watched() {
            self.emit(FarmEvent::UnitDone { job, ok: stats.ok, wall_ms: stats.wall_ms });
        }
        let now = self.clock.now();
        self.sched.finish(job, stats, now);
    }

    /// An agent connection ended: its queued and placed jobs go.
    pub fn agent_gone(&mut self, agent: u64) {
        let jobs: Vec<JobId> =
            self.asked.iter().filter(|(_, a)| a.agent == agent).map(|(j, _)| *j).collect();
        for job in jobs {
            self.forget(job);
            self.sched.cancel(job);
        }
        self.dispatch();
    }

    /// Places queued jobs and tells their agents.
    pub fn dispatch(&mut self) {
        let now = self.clock.now();
        for a in self.sched.dispatch(now) {
            let worker = self.addresses.get(&a.node).cloned();
            if let Some(original) = a.hedge_of {
                self.hedge(original, a.job, a.node, worker);
                continue;
            }
            let Some(asked) = self.asked.get_mut(&a.job) else { continue };
            let placed = Placement { tag: asked.tag, job: a.job, worker };
            let waited = now.saturating_sub(asked.asked_at);
            let answer = match asked.answered {
                false => CoordResponse::Placed(placed),
                true => CoordResponse::Hedge(placed),
            };
            if asked.tx.send(answer).is_err() {
                self.forget(a.job);
                self.sched.cancel(a.job);
            } else {
                if !asked.answered {
                    self.counters.placed += 1;
                    self.counters.queue_wait.observe(waited as f64 / 1000.0);
                }
                asked.answered = true;
                self.placed_event(a.job, a.node);
            }
        }
    }

    /// Tells live views that `job` went to `node`.
    fn placed_event(&self, job: JobId, node: NodeId) {
        if self.watched() {
            let submitter = self.sched.submitter_of(job).unwrap_or_default();
            self.emit(FarmEvent::UnitPlaced { job, node, submitter });
        }
    }

    /// Sends the agent of `original` a second placement, `twin` on `node`, because the
    /// original's node stalled. A twin that cannot be delivered is withdrawn (the original runs
    /// on).
    fn hedge(&mut self, original: JobId, twin: JobId, node: NodeId, worker: Option<String>) {
        let Some(a) = self.asked.get(&original) else {
            self.sched.cancel(twin);
            return;
        };
        let (tag, agent, tx, asked_at) = (a.tag, a.agent, a.tx.clone(), a.asked_at);
        if tx.send(CoordResponse::Hedge(Placement { tag, job: twin, worker })).is_err() {
            self.sched.cancel(twin);
            return;
        }
        tracing::info!(job = original, twin, "node stalled; unit hedged");
        self.hedged += 1;
        self.remember(twin, Asked { tag, agent, tx, asked_at, answered: true });
        self.placed_event(twin, node);
    }

    /// The farm as `discomy status` shows it.
    pub fn status(&self) -> FarmStatus {
        let nodes = self
            .sched
            .nodes()
            .into_iter()
            .map(|n| NodeStatus {
                id: n.id,
                host: n.spec.host.clone(),
                address: self.addresses.get(&n.id).cloned().unwrap_or_default(),
                slots: n.spec.slots,
                cores: n.spec.cores,
                assigned: u32::try_from(n.assigned).unwrap_or(u32::MAX),
                load: discomy_protocol::coordinator::LoadReport {
                    foreign_load: n.load.foreign_load,
                    running: n.load.running,
                    free_mem_mb: n.load.free_mem_mb,
                    free_disk_mb: n.load.free_disk_mb,
                },
                speed_wall_bps: n.speed.wall_bps,
                speed_cpu_bps: n.speed.cpu_bps,
                samples: n.speed.samples,
                placed_total: n.placed_total,
                done_total: n.done_total,
            })
            .collect();
        let submitters = self
            .sched
            .submitters()
            .into_iter()
            .map(|s| SubmitterStatus {
                host: s.name,
                running: s.running as u64,
                queued: s.queued as u64,
            })
            .collect();
        FarmStatus {
            farm: self.farm.clone(),
            nodes,
            submitters,
            queued: self.sched.queued() as u64,
            hedged: self.hedged,
            nodes_lost: self.nodes_lost,
            quarantined: self.quarantined(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{JobSpec, NodeSpec, PolicyConfig};

    /// One agent connection cannot grow the queue without bound: past its cap a unit is
    /// answered at once with no worker, and other agents are not affected.
    #[test]
    fn one_agent_cannot_queue_without_bound() {
        let mut core = Core::new("f".into(), Scheduler::new(PolicyConfig::default()));
        let node = NodeSpec {
            name: "w".into(),
            host: "w".into(),
            slots: 1,
            cores: 1,
            memory_mb: 1024,
            toolchains: vec![[1; 32]],
        };
        core.sched.add_node(1, node, 0);
        let spec = JobSpec {
            submitter: "a".into(),
            priority: 0,
            toolchain: [1; 32],
            bytes_in: 1000,
            work: 1000,
            unit: 0,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        for tag in 0..=MAX_JOBS_PER_AGENT as u64 {
            core.place(7, tag, spec.clone(), &tx);
        }
        match rx.try_recv() {
            Ok(CoordResponse::Placed(p)) => {
                assert_eq!((p.tag, p.worker), (MAX_JOBS_PER_AGENT as u64, None));
            }
            other => panic!("expected the refusal of the unit over the cap, got {other:?}"),
        }
        core.place(8, 0, spec, &tx);
        assert!(rx.try_recv().is_err(), "another agent's unit was refused");
        core.agent_gone(7);
        assert!(!core.per_agent.contains_key(&7));
    }
}
