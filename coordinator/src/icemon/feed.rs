//! One monitor's view of the farm, as icecream's scheduler would feed it: discomy nodes become
//! icecream hosts (a per-connection host id from 1, like the scheduler's per-login counter),
//! placements become jobs (a per-connection job id from 1). Pure: [`FarmStatus`] snapshots and
//! [`FarmEvent`]s in, [`Message`]s out; the caller supplies the clocks.
//!
//! What icemon needs, from its `icecreammonitor.cc`: a `MON_STATS` per host before any job
//! names it; a `MON_GET_CS` before a job's `MON_JOB_BEGIN` (a begin for a job it has not seen
//! asked for is ignored, "we started in between"); `MON_STATS "State:Offline\n"` when a host
//! goes. Build hosts that submit but run no worker are announced as hosts with no slots, as
//! icecream's submitters are daemons with a host id of their own.

use std::collections::HashMap;
use std::fmt::Write as _;

use discomy_protocol::coordinator::FarmStatus;

use super::wire::{JobDone, Message, PROTOCOL_VERSION, lang};
use crate::core::FarmEvent;
use crate::policy::{JobId, NodeId};

/// Most jobs followed at once per monitor; placements beyond are not shown.
pub const MAX_JOBS: usize = 65_536;
/// Most submitting hosts announced per monitor; jobs of others name host 0.
pub const MAX_SUBMITTERS: usize = 1024;
/// Most nodes followed per monitor (the coordinator admits fewer connections).
pub const MAX_HOSTS: usize = 16_384;
/// Longest value in a `MON_STATS` line (host names, addresses).
const MAX_VALUE: usize = 255;
/// A job still shown on a node with nothing assigned this long (ms) was cancelled without a
/// `Done` (its agent went away): it is ended with exit code 255.
pub const STALE_JOB_MS: u64 = 3000;
/// The exit code icecream's scheduler gives monitors for jobs lost with a host or submitter.
pub const LOST: u32 = 255;

struct Host {
    id: u32,
    name: String,
    /// The last `MON_STATS` text sent (resent only when it changes).
    text: String,
}

struct Job {
    id: u32,
    node: NodeId,
    began_ms: u64,
}

/// What one monitor has been told.
pub struct Feed {
    platform: String,
    hosts: HashMap<NodeId, Host>,
    submitters: HashMap<String, u32>,
    jobs: HashMap<JobId, Job>,
    last_host: u32,
    last_job: u32,
}

/// Makes a value safe for one `Key:Value` line: no line breaks or control characters (icemon
/// splits on `\n`), at most [`MAX_VALUE`] bytes.
fn clean(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if out.len() + c.len_utf8() > MAX_VALUE {
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

/// The host part of a worker address (`IP:PORT`, `[v6]:PORT`, `host:port`).
fn ip_of(address: &str) -> String {
    match address.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => address.rsplit_once(':').map_or(address, |(h, _)| h).to_owned(),
    }
}

/// A host's `MON_STATS` text, keys in the order of icecream's `handle_monitor_stats` (the form
/// without a daemon `STATS`: `Load` but no `LoadAvg*`/`FreeMem`). `speed` is icecream's unit,
/// output bytes per CPU millisecond, printed like C's `%f`.
pub fn stats_text(
    name: &str,
    ip: &str,
    max_jobs: u32,
    no_remote: bool,
    platform: &str,
    speed: f64,
    load: u32,
) -> String {
    let mut t = String::new();
    let _ = write!(t, "Name:{}\nIP:{}\nMaxJobs:{max_jobs}\n", clean(name), clean(ip));
    let _ = write!(t, "NoRemote:{no_remote}\nPlatform:{}\n", clean(platform));
    let speed = if speed.is_finite() { speed.max(0.0) } else { 0.0 };
    let _ = write!(t, "Version:{PROTOCOL_VERSION}\nFeatures:--\nSpeed:{speed:.6}\nLoad:{load}\n");
    t
}

/// Next id after `last`, skipping 0 (icemon's "no host").
fn next(last: &mut u32) -> u32 {
    *last = last.checked_add(1).unwrap_or(1);
    *last
}

impl Feed {
    /// Nothing told yet; hosts are announced with `platform` (discomy does not know a node's).
    pub fn new(platform: impl Into<String>) -> Feed {
        Feed {
            platform: platform.into(),
            hosts: HashMap::new(),
            submitters: HashMap::new(),
            jobs: HashMap::new(),
            last_host: 0,
            last_job: 0,
        }
    }

    /// The host id a node has in this feed.
    pub fn host_id(&self, node: NodeId) -> Option<u32> {
        self.hosts.get(&node).map(|h| h.id)
    }

    /// Jobs shown as running.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Brings the monitor up to `status`: new or changed nodes' stats, departed nodes offline
    /// (their jobs lost), submitters announced, cancelled jobs ended. The first call is the
    /// snapshot icecream sends right after `MON_LOGIN`. `now_ms` is a monotonic clock.
    pub fn sync(&mut self, status: &FarmStatus, now_ms: u64) -> Vec<Message> {
        let mut out = Vec::new();
        let present: std::collections::HashSet<NodeId> =
            status.nodes.iter().map(|n| n.id).collect();
        let gone: Vec<NodeId> =
            self.hosts.keys().filter(|n| !present.contains(n)).copied().collect();
        for node in gone {
            self.node_left(node, &mut out);
        }
        for n in &status.nodes {
            let speed = n.speed_cpu_bps / 1000.0;
            let load = u32::from(n.load.foreign_load);
            let text = stats_text(
                &n.host,
                &ip_of(&n.address),
                n.slots,
                false,
                &self.platform,
                speed,
                load,
            );
            self.node_stats(n.id, &n.host, text, &mut out);
            if n.assigned == 0 {
                self.end_stale(n.id, now_ms, &mut out);
            }
        }
        for s in &status.submitters {
            self.submitter_id(&s.host, &mut out);
        }
        out
    }

    /// What `event` means to the monitor. `now_ms` is the monotonic clock of [`Feed::sync`],
    /// `unix_s` the wall clock (a job's start time).
    pub fn event(&mut self, event: &FarmEvent, now_ms: u64, unix_s: u32) -> Vec<Message> {
        let mut out = Vec::new();
        match event {
            FarmEvent::NodeJoined { node, host, address, slots } => {
                let text = stats_text(host, &ip_of(address), *slots, false, &self.platform, 0.0, 0);
                self.node_stats(*node, host, text, &mut out);
            }
            FarmEvent::NodeLeft { node } => self.node_left(*node, &mut out),
            FarmEvent::UnitPlaced { job, node, submitter } => {
                self.placed(*job, *node, submitter, now_ms, unix_s, &mut out);
            }
            FarmEvent::UnitDone { job, ok, wall_ms } => {
                if let Some(j) = self.jobs.remove(job) {
                    let real_ms = u32::try_from(*wall_ms).unwrap_or(u32::MAX);
                    let exitcode = if *ok { 0 } else { 1 };
                    out.push(Message::MonJobDone(JobDone {
                        job_id: j.id,
                        exitcode,
                        real_ms,
                        ..JobDone::default()
                    }));
                }
            }
        }
        out
    }

    fn node_stats(&mut self, node: NodeId, name: &str, text: String, out: &mut Vec<Message>) {
        if let Some(h) = self.hosts.get_mut(&node) {
            if h.text != text {
                h.text.clone_from(&text);
                out.push(Message::MonStats { host_id: h.id, text });
            }
            return;
        }
        if self.hosts.len() >= MAX_HOSTS {
            return;
        }
        // A build host announced as a submitter now runs a worker: one host, not two.
        if let Some(id) = self.submitters.remove(name) {
            out.push(Message::MonStats { host_id: id, text: "State:Offline\n".into() });
        }
        let id = next(&mut self.last_host);
        self.hosts.insert(node, Host { id, name: name.to_owned(), text: text.clone() });
        out.push(Message::MonStats { host_id: id, text });
    }

    fn node_left(&mut self, node: NodeId, out: &mut Vec<Message>) {
        let Some(host) = self.hosts.remove(&node) else { return };
        let lost: Vec<JobId> =
            self.jobs.iter().filter(|(_, j)| j.node == node).map(|(k, _)| *k).collect();
        for job in lost {
            self.end(job, out);
        }
        out.push(Message::MonStats { host_id: host.id, text: "State:Offline\n".into() });
    }

    /// Ends, with [`LOST`], jobs shown on `node` for longer than [`STALE_JOB_MS`].
    fn end_stale(&mut self, node: NodeId, now_ms: u64, out: &mut Vec<Message>) {
        let stale: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.node == node && now_ms.saturating_sub(j.began_ms) >= STALE_JOB_MS)
            .map(|(k, _)| *k)
            .collect();
        for job in stale {
            self.end(job, out);
        }
    }

    fn end(&mut self, job: JobId, out: &mut Vec<Message>) {
        if let Some(j) = self.jobs.remove(&job) {
            out.push(Message::MonJobDone(JobDone {
                job_id: j.id,
                exitcode: LOST,
                ..JobDone::default()
            }));
        }
    }

    /// The host id of the build host `name`: its node's, or one of its own (announced first).
    fn submitter_id(&mut self, name: &str, out: &mut Vec<Message>) -> u32 {
        if let Some(h) = self.hosts.values().find(|h| h.name == name) {
            return h.id;
        }
        if let Some(id) = self.submitters.get(name) {
            return *id;
        }
        if name.is_empty() || self.submitters.len() >= MAX_SUBMITTERS {
            return 0;
        }
        let id = next(&mut self.last_host);
        self.submitters.insert(name.to_owned(), id);
        let text = stats_text(name, "", 0, true, &self.platform, 0.0, 0);
        out.push(Message::MonStats { host_id: id, text });
        id
    }

    fn placed(
        &mut self,
        job: JobId,
        node: NodeId,
        submitter: &str,
        now_ms: u64,
        unix_s: u32,
        out: &mut Vec<Message>,
    ) {
        // Placed again (its node was lost): the old showing ends first.
        self.end(job, out);
        let Some(host_id) = self.host_id(node) else { return };
        if self.jobs.len() >= MAX_JOBS {
            return;
        }
        let client_id = self.submitter_id(submitter, out);
        let id = next(&mut self.last_job);
        self.jobs.insert(job, Job { id, node, began_ms: now_ms });
        // discomy does not tell the coordinator the source's name or language.
        let filename = format!("job-{job}");
        out.push(Message::MonGetCs { filename, lang: lang::CXX, job_id: id, client_id });
        out.push(Message::MonJobBegin { job_id: id, stime: unix_s, host_id });
    }
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
