//! Verification of remote results: the agent asks the wrapper to compile a sample of remote
//! units locally as well, and acts on the verdicts. A node is on probation until
//! [`FIRST_UNITS`] of its objects matched: until then every unit it returns is checked (units
//! in flight when its first verdict arrives included); after that a fraction,
//! `--verify-rate`. A node whose object differs from the local one is quarantined: the
//! agent never uses it again, tells its coordinator (which drops it farm-wide), and lists it in
//! a file beside its socket, from which wrappers drop cache entries that node produced.
//!
//! Objects are byte-identical by design, so a mismatch is proof: a tampered toolchain, a
//! hostile donor, or broken hardware.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use discomy_protocol::stats::{Verification, VerifyCounts};
use discomy_protocol::{CompileResult, RefusalKind, Response, SourceResult};
use tracing::{info, warn};

/// Matching verdicts a node needs before its units are only sampled (the default of
/// [`Verifier::new`]'s `first_units`).
pub const FIRST_UNITS: u32 = 2;
/// Nodes remembered for [`FIRST_UNITS`] (a larger farm starts over, verifying first units
/// again: safe, only slower).
const MAX_NODES_SEEN: usize = 65_536;

/// Verification policy and state of one agent.
pub struct Verifier {
    /// Fraction of remote units verified after each node's first ones, 0–1.
    rate: f64,
    /// Matching verdicts a node needs before it is only sampled.
    first_units: u32,
    /// Where quarantined nodes are listed for wrappers (`<socket>.quarantined`).
    list: PathBuf,
    state: Mutex<Inner>,
}

#[derive(Default, Clone, Copy)]
struct Asked {
    /// Verdicts that found the node's object the same as the local one.
    matched: u32,
    /// Verdicts asked for and not received yet.
    awaited: u32,
}

#[derive(Default)]
struct Inner {
    /// Per node: its matching verdicts, and the verdicts still awaited.
    asked: HashMap<String, Asked>,
    quarantined: BTreeSet<String>,
    counts: VerifyCounts,
}

impl Verifier {
    /// A verifier checking every unit of a node until `first_units` of them matched, then
    /// `rate` of them (clamped to 0–1; not a number counts as 0).
    pub fn new(rate: f64, first_units: u32, socket: &std::path::Path) -> Verifier {
        let rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
        let list = discomy_wrapper::verify::list_path(socket);
        let verifier = Verifier { rate, first_units, list, state: Mutex::default() };
        // A previous agent's list is not this one's: quarantine lasts while the agent runs
        // (the coordinator keeps it farm-wide).
        let _ = std::fs::remove_file(&verifier.list);
        verifier
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the node at `address` is quarantined.
    pub fn is_quarantined(&self, address: &str) -> bool {
        self.inner().quarantined.contains(address)
    }

    /// Looks at a worker's answer on its way to the wrapper: a result from a quarantined node
    /// (it arrived after the verdict) becomes a refusal, and a successful one is marked for
    /// verification when it is one of its node's first or falls in the sample.
    pub fn mark(&self, response: Response) -> Response {
        let result = match &response {
            Response::Compiled(result) | Response::CompiledSources(SourceResult { result, .. }) => {
                result
            }
            _ => return response,
        };
        if result.exit_code != 0 || result.output.is_none() {
            return response;
        }
        let node = result.node.clone();
        let verify = {
            let mut inner = self.inner();
            if inner.quarantined.contains(&node) {
                return Response::refused(
                    RefusalKind::NoWorker,
                    format!("node {node} is quarantined (verification found a wrong object)"),
                );
            }
            if inner.asked.len() >= MAX_NODES_SEEN && !inner.asked.contains_key(&node) {
                inner.asked.clear();
            }
            let asked = inner.asked.entry(node).or_default();
            let verify = asked.matched < self.first_units || sample(self.rate);
            if verify {
                asked.awaited = asked.awaited.saturating_add(1);
                inner.counts.requested += 1;
            }
            verify
        };
        with_verify(response, verify)
    }

    /// Takes a wrapper's verdict; returns the node to quarantine when this verdict is the
    /// first mismatch of a node (the caller drops it from the pool and tells the coordinator).
    /// Verdicts about nodes this agent did not ask for are ignored (any local user may send
    /// one; only a unit the agent marked earns a verdict).
    pub fn verdict(&self, v: &Verification) -> Option<String> {
        let mut inner = self.inner();
        match inner.asked.get_mut(&v.node) {
            Some(asked) if asked.awaited > 0 => {
                asked.awaited -= 1;
                if v.matched {
                    asked.matched = asked.matched.saturating_add(1);
                }
            }
            _ => return None,
        }
        inner.counts.checked += 1;
        if v.matched {
            return None;
        }
        inner.counts.mismatched += 1;
        warn!(node = %v.node, source = %v.source, "verification: the node's object differs from a local compile");
        if !inner.quarantined.insert(v.node.clone()) {
            return None;
        }
        inner.counts.quarantined = inner.quarantined.iter().cloned().collect();
        let text: String = inner.quarantined.iter().map(|n| format!("{n}\n")).collect();
        drop(inner);
        if let Err(err) = discomy_protocol::plumbing::write_atomically(&self.list, text.as_bytes())
        {
            warn!(%err, list = %self.list.display(), "failed to write the quarantine list");
        }
        info!(node = %v.node, "node quarantined");
        Some(v.node.clone())
    }

    /// The counters for `discomy stats`.
    pub fn counts(&self) -> VerifyCounts {
        self.inner().counts.clone()
    }
}

/// True with probability `rate`.
fn sample(rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let bytes = discomy_protocol::handshake::random_nonce();
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    (u64::from_le_bytes(word) as f64 / u64::MAX as f64) < rate
}

fn with_verify(response: Response, verify: bool) -> Response {
    let set = |mut result: CompileResult| {
        result.verify = verify;
        result
    };
    match response {
        Response::Compiled(result) => Response::Compiled(set(result)),
        Response::CompiledSources(SourceResult { result, dep_file }) => {
            Response::CompiledSources(SourceResult { result: set(result), dep_file })
        }
        other => other,
    }
}

/// Names the node of a worker's result as this agent reached it (a worker names itself by the
/// address it bound, `0.0.0.0:3633` on every host), so verdicts and quarantine name one host.
pub fn stamp_node(response: &mut Response, address: &str) {
    if let Response::Compiled(result) | Response::CompiledSources(SourceResult { result, .. }) =
        response
    {
        address.clone_into(&mut result.node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discomy_protocol::Payload;

    fn compiled(node: &str) -> Response {
        Response::Compiled(CompileResult {
            exit_code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            output: Some(Payload::compress(b"object")),
            node: node.into(),
            compile_ms: 1,
            verify: false,
        })
    }

    fn marked(v: &Verifier, node: &str) -> Option<bool> {
        match v.mark(compiled(node)) {
            Response::Compiled(r) => Some(r.verify),
            _ => None,
        }
    }

    fn verdict(node: &str, matched: bool) -> Verification {
        Verification { node: node.into(), matched, source: "a.c".into() }
    }

    #[test]
    fn probation_then_sampling_then_quarantine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Verifier::new(0.0, FIRST_UNITS, &dir.path().join("agent.sock"));
        // On probation: every unit, however many are in flight, until two verdicts match.
        assert_eq!(marked(&v, "a:1"), Some(true));
        assert_eq!(marked(&v, "a:1"), Some(true));
        assert_eq!(marked(&v, "a:1"), Some(true));
        assert_eq!(v.verdict(&verdict("a:1", true)), None);
        assert_eq!(marked(&v, "a:1"), Some(true));
        assert_eq!(v.verdict(&verdict("a:1", true)), None);
        assert_eq!(marked(&v, "a:1"), Some(false), "rate 0 after probation");
        // A verdict nobody asked for is ignored (any local user can send one).
        assert_eq!(v.verdict(&verdict("b:2", false)), None);
        assert!(!v.is_quarantined("b:2"));
        // Two awaited verdicts left (the third and fourth units): a mismatch quarantines, once.
        assert_eq!(v.verdict(&verdict("a:1", false)), Some("a:1".into()));
        assert_eq!(v.verdict(&verdict("a:1", false)), None, "already quarantined");
        assert_eq!(v.verdict(&verdict("a:1", false)), None, "no verdict awaited any more");
        assert!(v.is_quarantined("a:1"));
        assert!(matches!(v.mark(compiled("a:1")), Response::Refused(_)));
        let counts = v.counts();
        assert_eq!((counts.requested, counts.checked, counts.mismatched), (4, 4, 2));
        assert_eq!(counts.quarantined, vec!["a:1".to_string()]);
        let list = std::fs::read_to_string(dir.path().join("agent.sock.quarantined"));
        assert_eq!(list.expect("the list"), "a:1\n");
    }

    /// `--no-verify` (no probation, no sampling): nothing is checked.
    #[test]
    fn no_verify_checks_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Verifier::new(0.0, 0, &dir.path().join("agent.sock"));
        assert!((0..10).all(|_| marked(&v, "a:1") == Some(false)));
        assert_eq!(v.counts().requested, 0);
    }
}
