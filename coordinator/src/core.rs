//! The daemon's shared state: the policy's [`Scheduler`] plus what the policy does not know
//! (node addresses, which agent connection waits for which job), behind one mutex.

use std::collections::{BTreeSet, HashMap};

use discomy_protocol::coordinator::{
    CoordResponse, FarmStatus, NodeStatus, Placement, SubmitterStatus,
};
use tokio::sync::mpsc;

use crate::policy::{Clock, IdMap, JobId, MonotonicClock, NodeId, Scheduler};

/// Most quarantined addresses remembered (a token holder could send any number).
pub const MAX_QUARANTINED: usize = 4096;

/// Where the answers for one agent connection go.
pub type AgentTx = mpsc::UnboundedSender<CoordResponse>;

/// An agent's job: where its answers go, and whether it has had its placement yet.
struct Asked {
    tag: u64,
    agent: u64,
    tx: AgentTx,
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
        self.addresses.remove(&node);
        for job in self.sched.node_lost(node, now) {
            // Requeued jobs keep their entry; jobs whose twin runs elsewhere were dropped.
            if !self.sched.is_queued(job) {
                self.asked.remove(&job);
                self.sched.cancel(job);
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
        self.asked.insert(job, Asked { tag, agent, tx: tx.clone(), answered: false });
    }

    /// A unit ended; the caller dispatches (once per batch of requests).
    pub fn done(&mut self, agent: u64, job: JobId, stats: crate::policy::JobStats) {
        if self.asked.get(&job).is_none_or(|a| a.agent != agent) {
            return; // not this agent's job (or already cancelled): ignore, do not learn
        }
        self.asked.remove(&job);
        let now = self.clock.now();
        self.sched.finish(job, stats, now);
    }

    /// An agent connection ended: its queued and placed jobs go.
    pub fn agent_gone(&mut self, agent: u64) {
        let jobs: Vec<JobId> =
            self.asked.iter().filter(|(_, a)| a.agent == agent).map(|(j, _)| *j).collect();
        for job in jobs {
            self.asked.remove(&job);
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
            let Some(asked) = self.asked.get_mut(&a.job) else { continue };
            let placed = Placement { tag: asked.tag, job: a.job, worker };
            let answer = match asked.answered {
                false => CoordResponse::Placed(placed),
                true => CoordResponse::Hedge(placed),
            };
            if asked.tx.send(answer).is_err() {
                self.asked.remove(&a.job);
                self.sched.cancel(a.job);
            } else {
                asked.answered = true;
            }
        }
    }

    /// Sends the agent of `original` a second placement, `twin`, because the original's node
    /// stalled. A twin that cannot be delivered is withdrawn (the original runs on).
    fn hedge(&mut self, original: JobId, twin: JobId, worker: Option<String>) {
        let Some(a) = self.asked.get(&original) else {
            self.sched.cancel(twin);
            return;
        };
        let (tag, agent, tx) = (a.tag, a.agent, a.tx.clone());
        if tx.send(CoordResponse::Hedge(Placement { tag, job: twin, worker })).is_err() {
            self.sched.cancel(twin);
            return;
        }
        tracing::info!(job = original, twin, "node stalled; unit hedged");
        self.hedged += 1;
        self.asked.insert(twin, Asked { tag, agent, tx, answered: true });
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
            quarantined: self.quarantined.iter().cloned().collect(),
        }
    }
}
