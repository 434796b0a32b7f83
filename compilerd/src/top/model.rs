//! `discomy top`'s state, without a terminal: the latest farm status and build queue as fetched,
//! the node table's sort column and direction, the filter (being typed or applied), and what a
//! key does to them. Everything here is pure and unit-tested; [`super::view`] draws it.

use std::cmp::Ordering;
use std::time::Instant;

use discomy_protocol::coordinator::{FarmStatus, NodeStatus, SubmitterStatus};
use discomy_protocol::ops::{JobState, JobView};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// A column the node table can be sorted by; `s` cycles through them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// The worker's address (numerically, as a socket address when it parses).
    Address,
    /// Slots, most first.
    Slots,
    /// Units placed there now, most first.
    Used,
    /// Load not caused by the farm, highest first.
    Load,
    /// Learned speed, fastest first.
    Speed,
    /// Units finished since it joined, most first.
    Done,
    /// Host id.
    Host,
}

impl SortKey {
    /// Every column, in the order `s` cycles through them.
    pub const ALL: [SortKey; 7] = [
        SortKey::Address,
        SortKey::Slots,
        SortKey::Used,
        SortKey::Load,
        SortKey::Speed,
        SortKey::Done,
        SortKey::Host,
    ];

    /// The column's name, as its header shows it.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Address => "address",
            SortKey::Slots => "slots",
            SortKey::Used => "used",
            SortKey::Load => "load",
            SortKey::Speed => "speed",
            SortKey::Done => "done",
            SortKey::Host => "host",
        }
    }

    /// The next column.
    pub fn next(self) -> SortKey {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }

    /// Whether the natural order is largest first (numbers) rather than A to Z (text).
    fn descending(self) -> bool {
        !matches!(self, SortKey::Address | SortKey::Host)
    }

    /// `a` before `b` in this column's natural order.
    fn compare(self, a: &NodeStatus, b: &NodeStatus) -> Ordering {
        let natural = match self {
            SortKey::Address => compare_addresses(&a.address, &b.address),
            SortKey::Host => a.host.cmp(&b.host),
            SortKey::Slots => a.slots.cmp(&b.slots),
            SortKey::Used => a.assigned.cmp(&b.assigned),
            SortKey::Load => a.load.foreign_load.cmp(&b.load.foreign_load),
            SortKey::Speed => a.speed_wall_bps.total_cmp(&b.speed_wall_bps),
            SortKey::Done => a.done_total.cmp(&b.done_total),
        };
        if self.descending() { natural.reverse() } else { natural }
    }
}

/// Socket addresses by IP then port; anything else as text, after them.
fn compare_addresses(a: &str, b: &str) -> Ordering {
    use std::net::SocketAddr;
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The build queue as last fetched.
#[derive(Debug, Clone)]
pub enum Queue {
    /// No API address was given.
    NotConfigured,
    /// Not fetched yet.
    Pending(String),
    /// The API did not answer (or refused): its address and why.
    Unreachable(String, String),
    /// The jobs that have not ended, from the API at this address.
    Jobs(String, Vec<JobView>),
}

/// What the fetching threads send.
#[derive(Debug)]
pub enum Update {
    /// The coordinator's answer, or why there was none.
    Farm(Result<FarmStatus, String>),
    /// The build queue.
    Queue(Queue),
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Draw again.
    Redraw,
    /// Leave.
    Quit,
}

/// Everything `discomy top` shows.
#[derive(Debug)]
pub struct Model {
    /// The coordinator(s) asked, for the header.
    pub coordinator: String,
    /// The last farm status received.
    pub farm: Option<FarmStatus>,
    /// When it arrived.
    pub farm_at: Option<Instant>,
    /// Why the last fetch failed (cleared by the next success).
    pub farm_error: Option<String>,
    /// The build queue.
    pub queue: Queue,
    /// The node table's sort column.
    pub sort: SortKey,
    /// The opposite of the column's natural order.
    pub reversed: bool,
    /// The filter text (host or address contains it, case-insensitively); empty: none.
    pub filter: String,
    /// Whether keys go to the filter text (after `/`, until Enter or Esc).
    pub editing: bool,
}

impl Model {
    /// An empty view of the farm at `coordinator`; `queue` says whether a build queue comes.
    pub fn new(coordinator: &str, queue: Queue) -> Model {
        Model {
            coordinator: coordinator.to_owned(),
            farm: None,
            farm_at: None,
            farm_error: None,
            queue,
            sort: SortKey::Address,
            reversed: false,
            filter: String::new(),
            editing: false,
        }
    }

    /// Takes in what a fetching thread sent.
    pub fn apply(&mut self, update: Update, now: Instant) {
        match update {
            Update::Farm(Ok(farm)) => {
                self.farm = Some(farm);
                self.farm_at = Some(now);
                self.farm_error = None;
            }
            Update::Farm(Err(why)) => self.farm_error = Some(why),
            Update::Queue(queue) => self.queue = queue,
        }
    }

    /// What `key` does: the filter line takes text while editing, otherwise keys are commands.
    pub fn key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        if self.editing {
            match key.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() => self.filter.push(c),
                _ => return None,
            }
            return Some(Action::Redraw);
        }
        match key.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('r') => self.reversed = !self.reversed,
            KeyCode::Char('/') => self.editing = true,
            KeyCode::Esc => self.filter.clear(),
            _ => return None,
        }
        Some(Action::Redraw)
    }

    /// Whether `text` passes the filter.
    fn passes(&self, texts: &[&str]) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let needle = self.filter.to_lowercase();
        texts.iter().any(|t| t.to_lowercase().contains(&needle))
    }

    /// The nodes that pass the filter, in the table's order (ties by address).
    pub fn nodes(&self) -> Vec<&NodeStatus> {
        let Some(farm) = &self.farm else { return Vec::new() };
        let mut nodes: Vec<&NodeStatus> =
            farm.nodes.iter().filter(|n| self.passes(&[&n.host, &n.address])).collect();
        nodes.sort_by(|a, b| {
            let by = self.sort.compare(a, b);
            let by = if self.reversed { by.reverse() } else { by };
            by.then_with(|| compare_addresses(&a.address, &b.address))
        });
        nodes
    }

    /// The build hosts with units placed or queued that pass the filter, busiest first.
    pub fn submitters(&self) -> Vec<&SubmitterStatus> {
        let Some(farm) = &self.farm else { return Vec::new() };
        let mut subs: Vec<&SubmitterStatus> =
            farm.submitters.iter().filter(|s| self.passes(&[&s.host])).collect();
        subs.sort_by(|a, b| {
            (b.running + b.queued).cmp(&(a.running + a.queued)).then_with(|| a.host.cmp(&b.host))
        });
        subs
    }

    /// The jobs that have not ended and pass the filter (name, submitter, builder): running,
    /// then scheduled, then waiting; by priority (highest first), then age.
    pub fn jobs(&self) -> Vec<&JobView> {
        let Queue::Jobs(_, jobs) = &self.queue else { return Vec::new() };
        let rank = |s: JobState| match s {
            JobState::Running => 0,
            JobState::Scheduled => 1,
            _ => 2,
        };
        let mut shown: Vec<&JobView> = jobs
            .iter()
            .filter(|j| !j.state.is_final())
            .filter(|j| {
                self.passes(&[&j.name, &j.submitter, j.builder.as_deref().unwrap_or_default()])
            })
            .collect();
        shown.sort_by(|a, b| {
            rank(a.state)
                .cmp(&rank(b.state))
                .then_with(|| b.priority.cmp(&a.priority))
                .then_with(|| a.id.cmp(&b.id))
        });
        shown
    }

    /// Slots in use and in all, over every node (the filter does not apply).
    pub fn slot_totals(&self) -> (u32, u32) {
        let Some(farm) = &self.farm else { return (0, 0) };
        (farm.nodes.iter().map(|n| n.assigned).sum(), farm.nodes.iter().map(|n| n.slots).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(address: &str, host: &str, slots: u32, assigned: u32, done: u64) -> NodeStatus {
        NodeStatus {
            address: address.into(),
            host: host.into(),
            slots,
            assigned,
            done_total: done,
            ..NodeStatus::default()
        }
    }

    fn model() -> Model {
        let mut m = Model::new("127.0.0.1:1", Queue::NotConfigured);
        let farm = FarmStatus {
            farm: "default".into(),
            nodes: vec![
                node("10.0.0.2:7000", "beta", 8, 1, 50),
                node("10.0.0.10:7000", "gamma", 2, 2, 5),
                node("10.0.0.1:7000", "alpha", 4, 0, 90),
            ],
            submitters: vec![
                SubmitterStatus { host: "build1".into(), running: 2, queued: 0 },
                SubmitterStatus { host: "build2".into(), running: 3, queued: 4 },
            ],
            ..FarmStatus::default()
        };
        m.apply(Update::Farm(Ok(farm)), Instant::now());
        m
    }

    fn addresses(m: &Model) -> Vec<&str> {
        m.nodes().iter().map(|n| n.address.as_str()).collect()
    }

    fn press(m: &mut Model, code: KeyCode) -> Option<Action> {
        m.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn addresses_sort_numerically_and_s_cycles_columns() {
        let mut m = model();
        assert_eq!(addresses(&m), ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.10:7000"]);
        press(&mut m, KeyCode::Char('s'));
        assert_eq!(m.sort, SortKey::Slots);
        assert_eq!(addresses(&m), ["10.0.0.2:7000", "10.0.0.1:7000", "10.0.0.10:7000"]);
        press(&mut m, KeyCode::Char('r'));
        assert_eq!(addresses(&m), ["10.0.0.10:7000", "10.0.0.1:7000", "10.0.0.2:7000"]);
        press(&mut m, KeyCode::Char('r'));
        press(&mut m, KeyCode::Char('s'));
        assert_eq!(m.sort, SortKey::Used);
        assert_eq!(addresses(&m)[0], "10.0.0.10:7000");
        for _ in 0..SortKey::ALL.len() {
            press(&mut m, KeyCode::Char('s'));
        }
        assert_eq!(m.sort, SortKey::Used, "the cycle comes back round");
    }

    #[test]
    fn slash_types_a_filter_enter_keeps_it_esc_clears_it() {
        let mut m = model();
        assert_eq!(press(&mut m, KeyCode::Char('/')), Some(Action::Redraw));
        assert!(m.editing);
        for c in "0.0.1".chars() {
            press(&mut m, KeyCode::Char(c));
        }
        // `q` and `s` are text while typing.
        assert_eq!(press(&mut m, KeyCode::Char('q')), Some(Action::Redraw));
        press(&mut m, KeyCode::Backspace);
        assert_eq!(addresses(&m), ["10.0.0.1:7000", "10.0.0.10:7000"]);
        press(&mut m, KeyCode::Enter);
        assert!(!m.editing);
        assert_eq!(m.filter, "0.0.1");
        press(&mut m, KeyCode::Char('/'));
        for c in "AL".chars() {
            press(&mut m, KeyCode::Char(c));
        }
        press(&mut m, KeyCode::Enter);
        assert_eq!(addresses(&m), Vec::<&str>::new(), "no node has both");
        press(&mut m, KeyCode::Esc);
        assert_eq!(m.filter, "");
        press(&mut m, KeyCode::Char('/'));
        for c in "AL".chars() {
            press(&mut m, KeyCode::Char(c));
        }
        assert_eq!(addresses(&m), ["10.0.0.1:7000"], "host text matches, case-insensitively");
        press(&mut m, KeyCode::Esc);
        assert!(!m.editing);
        assert_eq!(addresses(&m).len(), 3);
        assert_eq!(press(&mut m, KeyCode::Char('q')), Some(Action::Quit));
        assert_eq!(press(&mut m, KeyCode::Char('x')), None);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(m.key(ctrl_c), Some(Action::Quit));
    }

    #[test]
    fn submitters_busiest_first_and_totals_ignore_the_filter() {
        let mut m = model();
        let hosts: Vec<&str> = m.submitters().iter().map(|s| s.host.as_str()).collect();
        assert_eq!(hosts, ["build2", "build1"]);
        m.filter = "build1".into();
        assert_eq!(m.submitters().len(), 1);
        assert_eq!(m.slot_totals(), (3, 14));
    }

    #[test]
    fn a_failed_fetch_keeps_the_last_status() {
        let mut m = model();
        m.apply(Update::Farm(Err("coordinator 127.0.0.1:1: timed out".into())), Instant::now());
        assert_eq!(m.nodes().len(), 3);
        assert!(m.farm_error.is_some());
        m.apply(Update::Farm(Ok(FarmStatus::default())), Instant::now());
        assert!(m.farm_error.is_none());
        assert!(m.nodes().is_empty());
    }

    #[test]
    fn jobs_running_first_then_by_priority() {
        let job = |id: u64, state: JobState, priority: i32| -> JobView {
            serde_json::from_value(serde_json::json!({
                "id": id, "name": format!("pkg{id}"), "state": state, "priority": priority,
                "submitter": "alice", "batch": null,
                "target": {"chroot": "rocky-9", "arch": "x86_64"},
                "source": {"kind": "srpm",
                    "srpm": {"blake3": "0".repeat(64), "size": 1, "name": "x.src.rpm"}},
                "attempt": 0, "infra_failures": 0, "builder": null, "created_at": 0.0,
                "updated_at": 0.0, "not_before": 0.0, "timeout_secs": 60, "failure": null,
                "artifacts": []
            }))
            .unwrap_or_else(|e| panic!("job json: {e}"))
        };
        let mut m = model();
        m.apply(
            Update::Queue(Queue::Jobs(
                "http://x".into(),
                vec![
                    job(1, JobState::Waiting, 0),
                    job(2, JobState::Succeeded, 0),
                    job(3, JobState::Waiting, 5),
                    job(4, JobState::Running, 0),
                ],
            )),
            Instant::now(),
        );
        let ids: Vec<u64> = m.jobs().iter().map(|j| j.id).collect();
        assert_eq!(ids, [4, 3, 1]);
    }
}
