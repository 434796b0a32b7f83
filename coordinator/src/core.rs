//! The daemon's shared state: the policy's [`Scheduler`] plus what the policy does not know
//! (node addresses, which agent connection waits for which job), behind one mutex.

use std::collections::HashMap;

use discomy_protocol::coordinator::{
    CoordResponse, FarmStatus, NodeStatus, Placement, SubmitterStatus,
};
use tokio::sync::mpsc;

use crate::policy::{Clock, IdMap, JobId, MonotonicClock, NodeId, Scheduler};

/// Where the answers for one agent connection go.
pub type AgentTx = mpsc::UnboundedSender<CoordResponse>;

/// A job waiting for its placement.
struct Waiter {
    tag: u64,
    agent: u64,
    tx: AgentTx,
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
    waiting: IdMap<Waiter>,
    /// Placed jobs by agent connection, to cancel them when it goes.
    owner: IdMap<u64>,
    /// Where a placed job's placement went, for a hedge of it.
    placed: IdMap<Waiter>,
    /// Jobs of a lost node queued again while their agent still waits on the lost node: their
    /// next placement goes to that agent as a hedge.
    replacing: IdMap<Waiter>,
    next_id: u64,
}

impl Core {
    /// An empty farm.
    pub fn new(farm: String, sched: Scheduler) -> Core {
        Core {
            sched,
            clock: MonotonicClock::default(),
            farm,
            addresses: HashMap::new(),
            waiting: IdMap::default(),
            owner: IdMap::default(),
            placed: IdMap::default(),
            replacing: IdMap::default(),
            next_id: 0,
        }
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

    /// A node is gone. Its placed jobs are placed again and each new placement goes to the
    /// job's agent as a hedge: an agent whose connection to the node failed has asked again
    /// already (and its `Done` for the old job withdraws the copy), but one whose connection
    /// stays open and silent (a stopped or cut-off host) would wait for its unit limit.
    pub fn node_gone(&mut self, node: NodeId) {
        let now = self.clock.now();
        self.addresses.remove(&node);
        for job in self.sched.node_lost(node, now) {
            self.waiting.remove(&job);
            match self.placed.remove(&job) {
                Some(w) if self.sched.is_queued(job) => {
                    self.replacing.insert(job, w);
                }
                _ => {
                    self.sched.cancel(job);
                    self.owner.remove(&job);
                }
            }
        }
        self.dispatch();
    }

    /// Queues one unit for an agent; the caller dispatches (once per batch of requests).
    pub fn place(&mut self, agent: u64, tag: u64, spec: crate::policy::JobSpec, tx: &AgentTx) {
        if self.sched.node_count() == 0 {
            let _ = tx.send(CoordResponse::Placed(Placement { tag, job: 0, worker: None }));
            return;
        }
        let job = self.sched.submit(spec);
        self.waiting.insert(job, Waiter { tag, agent, tx: tx.clone() });
        self.owner.insert(job, agent);
    }

    /// A unit ended; the caller dispatches (once per batch of requests).
    pub fn done(&mut self, agent: u64, job: JobId, stats: crate::policy::JobStats) {
        if self.owner.get(&job) != Some(&agent) {
            return; // not this agent's job (or already cancelled): ignore, do not learn
        }
        self.owner.remove(&job);
        self.placed.remove(&job);
        self.replacing.remove(&job);
        let now = self.clock.now();
        self.sched.finish(job, stats, now);
    }

    /// An agent connection ended: its queued and placed jobs go.
    pub fn agent_gone(&mut self, agent: u64) {
        let jobs: Vec<JobId> =
            self.owner.iter().filter(|(_, a)| **a == agent).map(|(j, _)| *j).collect();
        for job in jobs {
            self.owner.remove(&job);
            self.waiting.remove(&job);
            self.placed.remove(&job);
            self.replacing.remove(&job);
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
                self.hedge(original, a.job, worker);
                continue;
            }
            // Placed again after its node was lost: a hedge for its waiting agent.
            let (w, again) = match self.replacing.remove(&a.job) {
                Some(w) => (w, true),
                None => match self.waiting.remove(&a.job) {
                    Some(w) => (w, false),
                    None => continue,
                },
            };
            let placed = Placement { tag: w.tag, job: a.job, worker };
            let answer =
                if again { CoordResponse::Hedge(placed) } else { CoordResponse::Placed(placed) };
            if w.tx.send(answer).is_err() {
                self.owner.remove(&a.job);
                self.sched.cancel(a.job);
            } else {
                self.placed.insert(a.job, w);
            }
        }
    }

    /// Sends the agent of `original` a second placement, `twin`, because the original's node
    /// stalled. A twin that cannot be delivered is withdrawn (the original runs on).
    fn hedge(&mut self, original: JobId, twin: JobId, worker: Option<String>) {
        let Some(w) = self.placed.get(&original) else {
            self.sched.cancel(twin);
            return;
        };
        let (tag, agent, tx) = (w.tag, w.agent, w.tx.clone());
        if tx.send(CoordResponse::Hedge(Placement { tag, job: twin, worker })).is_err() {
            self.sched.cancel(twin);
            return;
        }
        tracing::info!(job = original, twin, "node stalled; unit hedged");
        self.owner.insert(twin, agent);
        self.placed.insert(twin, Waiter { tag, agent, tx });
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
        }
    }
}
