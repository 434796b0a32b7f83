//! The queue's rules on an in-memory database with a driven clock: claims by priority and fair
//! share, leases, retries with backoff, timeouts, cancel, and finishing exactly once.
#![allow(clippy::unwrap_used)]

use discomy_protocol::ops::{
    BatchRequest, BlobRef, BuilderAnswer, BuilderReport, Failure, FailureKind, FinishRequest, Held,
    JobSource, JobState, Outcome, SubmitRequest, Target,
};

use super::OpsError;
use super::db::Db;
use super::job_queue::QueueConfig;
use super::pg::PgStore;
use super::pg::scratch::{ScratchError, ScratchPostgres};
use super::store::QueueStore;

/// Opens the store under test (again, on the same database, when called again).
type Open<'a> = &'a dyn Fn() -> Box<dyn QueueStore>;

/// Each rule runs on SQLite (a file in a temporary directory) and on PostgreSQL (a database of
/// its own on a private server, see [`pg_server`]).
macro_rules! on_both_stores {
    ($($rule:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $rule() {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("q.sqlite3");
                    super::$rule(&|| Box::new(super::Db::open(&path).unwrap()));
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $rule() {
                    let Some(database) = super::pg_database(stringify!($rule)) else { return };
                    super::$rule(&|| Box::new(super::PgStore::connect(&database, None).unwrap()));
                }
            )*
        }
    };
}

on_both_stores!(
    a_job_runs_once_to_success,
    priority_first_then_fair_share_then_age,
    an_operator_reprioritises_a_waiting_job_only,
    a_silent_builder_loses_its_job_to_a_retry_with_backoff,
    infrastructure_failures_are_retried_up_to_a_limit_and_build_failures_never,
    timeouts_and_cancels_stop_the_builder,
    an_attempt_still_held_after_its_finish_keeps_its_slot,
    a_restarted_builder_gives_its_jobs_back,
    submissions_are_checked_and_survive_reopening,
    a_batch_builds_in_dependency_order_with_earlier_rpms,
    a_cycle_is_refused_with_its_members_and_a_failed_dependency_fails_its_dependents,
    the_outbox_keeps_items_until_done_and_deliveries_are_seen_once,
);

/// The private PostgreSQL server of this test run, started once. Missing PostgreSQL fails the
/// run under CI (`CI` set) and skips the PostgreSQL runs, saying so, elsewhere.
#[allow(clippy::print_stderr)]
pub(super) fn pg_server() -> Option<&'static ScratchPostgres> {
    static SERVER: std::sync::OnceLock<Option<ScratchPostgres>> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| match ScratchPostgres::start(false) {
            Ok(server) => Some(server),
            Err(e @ ScratchError::NotInstalled) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping the PostgreSQL runs: {e} (apt-get install postgresql)");
                None
            }
            Err(e) => panic!("PostgreSQL: {e}"),
        })
        .as_ref()
}

/// A fresh database named after `test` on [`pg_server`], as a connection string.
pub(super) fn pg_database(test: &str) -> Option<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let server = pg_server()?;
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name: String = format!("t{n}_{test}").chars().take(60).collect();
    Some(server.create_database(&name).unwrap())
}

fn config() -> QueueConfig {
    QueueConfig {
        backoff_secs: 10.0,
        lease_secs: 30.0,
        report_every_secs: 2.0,
        ..Default::default()
    }
}

fn submit(db: &mut dyn QueueStore, name: &str, submitter: &str, priority: i32, now: f64) -> u64 {
    let srpm = BlobRef { name: format!("{name}-1.0-1.src.rpm"), blake3: "a".repeat(64), size: 1 };
    let req = SubmitRequest {
        source: JobSource::Srpm { srpm },
        target: Target { chroot: "rocky-9".into(), arch: "x86_64".into() },
        priority,
        batch: None,
        submitter: submitter.into(),
        timeout_secs: Some(100),
        requires: Vec::new(),
        provides: Vec::new(),
    };
    db.submit(&req, &config(), &|_| true, now).unwrap().0
}

fn report(builder: &str, slots: u32, held: Vec<Held>) -> BuilderReport {
    BuilderReport {
        builder: builder.into(),
        slots,
        memory_bytes: 64 << 30,
        disk_free_bytes: 64 << 30,
        arches: vec!["x86_64".into()],
        chroots: vec!["rocky-9".into()],
        held,
        wants_work: true,
    }
}

fn ask(
    db: &mut dyn QueueStore,
    builder: &str,
    slots: u32,
    held: Vec<Held>,
    now: f64,
) -> BuilderAnswer {
    db.report(&report(builder, slots, held), &config(), now).unwrap().0
}

fn finish(
    db: &mut dyn QueueStore,
    job: u64,
    builder: &str,
    attempt: u32,
    outcome: Outcome,
) -> Result<JobState, OpsError> {
    let req = FinishRequest { builder: builder.into(), attempt, outcome };
    db.finish(job, &req, &config(), 50.0).map(|(j, _)| j.state)
}

fn held(job: u64, attempt: u32) -> Held {
    Held { job, attempt, started: true }
}

fn a_job_runs_once_to_success(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let id = submit(db, "lua", "alice", 0, 1.0);
    let a = ask(db, "b1", 1, vec![], 2.0).assignment.unwrap();
    assert_eq!((a.job, a.attempt, a.name.as_str()), (id, 1, "lua-1.0-1"));
    assert_eq!(db.job(id).unwrap().state, JobState::Scheduled);
    let answer = ask(db, "b1", 1, vec![held(id, 1)], 3.0);
    assert!(answer.assignment.is_none() && answer.stop.is_empty());
    assert_eq!(db.job(id).unwrap().state, JobState::Running);

    db.check_attempt(id, 1).unwrap();
    assert!(matches!(db.check_attempt(id, 2), Err(OpsError::Conflict(_))));
    assert_eq!(finish(db, id, "b1", 1, Outcome::Succeeded).unwrap(), JobState::Succeeded);
    // The same finish again (its answer was lost) changes nothing; another attempt is refused.
    assert_eq!(finish(db, id, "b1", 1, Outcome::Succeeded).unwrap(), JobState::Succeeded);
    assert!(matches!(finish(db, id, "b2", 1, Outcome::Succeeded), Err(OpsError::Conflict(_))));
    assert!(
        matches!(db.check_attempt(id, 1), Err(OpsError::Conflict(_))),
        "no uploads after the end"
    );
    let states: Vec<_> = db.events(Some(id), 0, 100).unwrap().iter().map(|e| e.to).collect();
    assert_eq!(
        states,
        [JobState::Waiting, JobState::Scheduled, JobState::Running, JobState::Succeeded]
    );
    // `/metrics`' jobs by state.
    let other = submit(db, "zlib", "alice", 0, 4.0);
    let mut counts = db.state_counts().unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, [(JobState::Succeeded, 1), (JobState::Waiting, 1)], "job {other}");
}

fn an_operator_reprioritises_a_waiting_job_only(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let first = submit(db, "first", "alice", 0, 1.0);
    let second = submit(db, "second", "alice", 0, 2.0);
    let (view, events) = db.set_priority(second, 5, "ops", 3.0).unwrap();
    assert_eq!(view.priority, 5);
    assert_eq!((events[0].from, events[0].to), (None, JobState::Waiting));
    assert!(events[0].detail.contains("priority 0 → 5 by ops"), "{:?}", events[0].detail);
    assert!(matches!(db.set_priority(first, 1001, "ops", 3.0), Err(OpsError::BadRequest(_))));
    assert!(matches!(db.set_priority(999, 1, "ops", 3.0), Err(OpsError::NotFound(_))));
    // The raised job is claimed first; a scheduled one keeps its priority.
    let a = ask(db, "b1", 1, vec![], 4.0).assignment.unwrap();
    assert_eq!(a.job, second);
    assert!(matches!(db.set_priority(second, 9, "ops", 5.0), Err(OpsError::Conflict(_))));
    assert_eq!(db.job(first).unwrap().priority, 0);
}

fn priority_first_then_fair_share_then_age(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let big: Vec<u64> = (0..5).map(|i| submit(db, &format!("big{i}"), "batch", 0, 1.0)).collect();
    let small = submit(db, "small", "bob", 0, 2.0);
    let urgent = submit(db, "urgent", "carol", 9, 3.0);
    let mut order = Vec::new();
    let mut holding = Vec::new();
    for t in 0..4 {
        let a = ask(db, "b1", 8, holding.clone(), 10.0 + f64::from(t)).assignment.unwrap();
        holding.push(held(a.job, a.attempt));
        order.push(a.job);
    }
    // The urgent job first; then the big batch's oldest; then bob's (the batch already has a
    // build running), then the batch again.
    assert_eq!(order, [urgent, big[0], small, big[1]]);
}

fn a_silent_builder_loses_its_job_to_a_retry_with_backoff(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let id = submit(db, "zlib", "alice", 0, 0.0);
    ask(db, "b1", 1, vec![], 1.0).assignment.unwrap();
    assert!(db.tick(&config(), 20.0).unwrap().is_empty(), "the lease still runs");
    db.tick(&config(), 40.0).unwrap();
    let job = db.job(id).unwrap();
    assert_eq!((job.state, job.infra_failures), (JobState::Waiting, 1));
    assert_eq!(job.not_before, 50.0, "10 s of backoff");
    assert!(ask(db, "b2", 1, vec![], 45.0).assignment.is_none(), "backing off");
    let a = ask(db, "b2", 1, vec![], 51.0).assignment.unwrap();
    assert_eq!((a.job, a.attempt), (id, 2));
    // The first builder comes back and reports its old attempt: it is told to stop, and its
    // finish is refused.
    let answer = ask(db, "b1", 1, vec![held(id, 1)], 52.0);
    assert_eq!(answer.stop, [held(id, 1)]);
    assert!(answer.assignment.is_none(), "nothing else waits");
    assert!(matches!(finish(db, id, "b1", 1, Outcome::Succeeded), Err(OpsError::Conflict(_))));
}

fn infrastructure_failures_are_retried_up_to_a_limit_and_build_failures_never(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let id = submit(db, "bash", "alice", 0, 0.0);
    let infra =
        Outcome::Failed(Failure { kind: FailureKind::Infrastructure, message: "disk full".into() });
    let mut now = 1.0;
    for attempt in 1..=3 {
        let a = ask(db, "b1", 1, vec![], now).assignment.expect("claimable after its backoff");
        assert_eq!(a.attempt, attempt);
        let state = finish(db, id, "b1", attempt, infra.clone()).unwrap();
        let want = if attempt < 3 { JobState::Waiting } else { JobState::Failed };
        assert_eq!(state, want, "attempt {attempt}");
        now += 1000.0;
    }
    assert_eq!(db.job(id).unwrap().failure.unwrap().kind, FailureKind::Infrastructure);

    let id = submit(db, "broken", "alice", 0, now);
    let a = ask(db, "b1", 1, vec![], now).assignment.unwrap();
    let build =
        Outcome::Failed(Failure { kind: FailureKind::Build, message: "error: bad spec".into() });
    assert_eq!(finish(db, id, "b1", a.attempt, build).unwrap(), JobState::Failed);
    assert!(ask(db, "b1", 1, vec![], now + 5000.0).assignment.is_none(), "not retried");
    // A user's retry queues it again, at once.
    let (job, _) = db.retry(id, "test", now + 5001.0).unwrap();
    assert_eq!(job.state, JobState::Waiting);
    assert_eq!(ask(db, "b1", 1, vec![], now + 5002.0).assignment.unwrap().attempt, 2);
}

fn timeouts_and_cancels_stop_the_builder(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let slow = submit(db, "slow", "alice", 0, 0.0);
    let doomed = submit(db, "doomed", "alice", 0, 0.0);
    let a1 = ask(db, "b1", 2, vec![], 1.0).assignment.unwrap();
    let a2 = ask(db, "b1", 2, vec![held(a1.job, 1)], 2.0).assignment.unwrap();
    assert_eq!((a1.job, a2.job), (slow, doomed));
    db.cancel(doomed, "test", 3.0).unwrap();
    let answer = ask(db, "b1", 2, vec![held(slow, 1), held(doomed, 1)], 4.0);
    assert_eq!(answer.stop, [held(doomed, 1)]);
    // Held past its 100 s timeout (leases renewed all along).
    for t in [30.0, 60.0, 90.0] {
        ask(db, "b1", 1, vec![held(slow, 1)], t);
    }
    db.tick(&config(), 102.0).unwrap();
    let job = db.job(slow).unwrap();
    assert_eq!((job.state, job.failure.unwrap().kind), (JobState::Failed, FailureKind::Timeout));
    assert_eq!(ask(db, "b1", 1, vec![held(slow, 1)], 103.0).stop, [held(slow, 1)]);
    assert!(matches!(db.cancel(slow, "test", 104.0), Err(OpsError::Conflict(_))));
}

fn an_attempt_still_held_after_its_finish_keeps_its_slot(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let first = submit(db, "one", "alice", 0, 0.0);
    submit(db, "two", "alice", 0, 0.0);
    let a = ask(db, "b1", 1, vec![], 1.0).assignment.unwrap();
    assert_eq!(
        finish(db, first, "b1", a.attempt, Outcome::Succeeded).unwrap(),
        JobState::Succeeded
    );
    // The builder's thread has not let go yet: no second job for its one slot.
    let answer = ask(db, "b1", 1, vec![held(first, 1)], 2.0);
    assert!(answer.assignment.is_none(), "{answer:?}");
    assert_eq!(answer.stop, [held(first, 1)]);
    assert!(ask(db, "b1", 1, vec![], 3.0).assignment.is_some());
}

fn a_restarted_builder_gives_its_jobs_back(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let id = submit(db, "xz", "alice", 0, 0.0);
    ask(db, "b1", 1, vec![], 1.0).assignment.unwrap();
    // b1 restarted and holds nothing: the job is retried (after its backoff), not left leased.
    let answer = ask(db, "b1", 1, vec![], 10.0);
    assert!(answer.assignment.is_none(), "backing off");
    let job = db.job(id).unwrap();
    assert_eq!((job.state, job.infra_failures), (JobState::Waiting, 1));
}

fn submissions_are_checked_and_survive_reopening(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let id = submit(db, "lua", "alice", 3, 1.0);
    let mut bad = SubmitRequest {
        source: JobSource::Srpm {
            srpm: BlobRef { name: "../evil.src.rpm".into(), blake3: "a".repeat(64), size: 1 },
        },
        target: Target { chroot: "rocky-9".into(), arch: "x86_64".into() },
        priority: 0,
        batch: None,
        submitter: "mallory".into(),
        timeout_secs: None,
        requires: Vec::new(),
        provides: Vec::new(),
    };
    assert!(matches!(db.submit(&bad, &config(), &|_| true, 2.0), Err(OpsError::BadRequest(_))));
    bad.source = JobSource::Srpm {
        srpm: BlobRef { name: "ok.src.rpm".into(), blake3: "a".repeat(64), size: 1 },
    };
    assert!(
        matches!(db.submit(&bad, &config(), &|_| false, 2.0), Err(OpsError::BadRequest(_))),
        "a source never uploaded"
    );
    bad.timeout_secs = Some(u64::MAX);
    assert!(matches!(db.submit(&bad, &config(), &|_| true, 2.0), Err(OpsError::BadRequest(_))));
    drop(store);
    let mut store = open();
    let db = store.as_mut();
    let jobs = db.list(None, None).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].id, jobs[0].priority, jobs[0].state), (id, 3, JobState::Waiting));
}

fn batch_job(name: &str, requires: &[&str], provides: &[&str]) -> SubmitRequest {
    let srpm = BlobRef { name: format!("{name}-1.0-1.src.rpm"), blake3: "a".repeat(64), size: 1 };
    SubmitRequest {
        source: JobSource::Srpm { srpm },
        target: Target { chroot: "rocky-9".into(), arch: "x86_64".into() },
        priority: 0,
        batch: None,
        submitter: "alice".into(),
        timeout_secs: None,
        requires: requires.iter().map(|s| s.to_string()).collect(),
        provides: provides.iter().map(|s| s.to_string()).collect(),
    }
}

fn artefact(name: &str) -> BlobRef {
    BlobRef {
        name: name.into(),
        blake3: blake3::hash(name.as_bytes()).to_hex().to_string(),
        size: 1,
    }
}

fn a_batch_builds_in_dependency_order_with_earlier_rpms(open: Open<'_>) {
    let mut store = open();
    let db = store.as_mut();
    let req = BatchRequest {
        batch: "chain".into(),
        jobs: vec![
            // Submitted before what it needs: order comes from requires/provides, not position.
            batch_job("lpeg", &["gcc", "lua-devel"], &["lpeg"]),
            batch_job("lua", &["gcc"], &["lua", "lua-devel"]),
            batch_job("lfs", &["lua-devel"], &["lfs"]),
        ],
    };
    let (ids, _) = db.submit_batch(&req, &config(), &|_| true, 1.0).unwrap();
    let (lpeg, lua, lfs) = (ids[0], ids[1], ids[2]);
    assert_eq!(db.job(lpeg).unwrap().waits_for, [lua]);
    let a = ask(db, "b1", 4, vec![], 2.0).assignment.unwrap();
    assert_eq!(a.job, lua, "only lua can start");
    assert!(a.deps.is_empty());
    assert!(ask(db, "b2", 4, vec![], 3.0).assignment.is_none(), "the others wait for lua");
    for name in [
        "lua-5.4-1.x86_64.rpm",
        "lua-devel-5.4-1.x86_64.rpm",
        "lua-5.4-1.src.rpm",
        "lua-debuginfo-5.4-1.x86_64.rpm",
        "build.log",
    ] {
        db.add_artifact(lua, 1, &artefact(name)).unwrap();
    }
    assert_eq!(finish(db, lua, "b1", 1, Outcome::Succeeded).unwrap(), JobState::Succeeded);
    let b = ask(db, "b2", 4, vec![], 4.0).assignment.unwrap();
    let c = ask(db, "b1", 4, vec![], 5.0).assignment.unwrap();
    assert_eq!((b.job, c.job), (lpeg, lfs));
    let deps: Vec<&str> = b.deps.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(deps, ["lua-5.4-1.x86_64.rpm", "lua-devel-5.4-1.x86_64.rpm"]);
}

fn a_cycle_is_refused_with_its_members_and_a_failed_dependency_fails_its_dependents(
    open: Open<'_>,
) {
    let mut store = open();
    let db = store.as_mut();
    let req = BatchRequest {
        batch: "loop".into(),
        jobs: vec![
            batch_job("a", &["c-devel"], &["a-devel"]),
            batch_job("b", &["a-devel"], &["b-devel"]),
            batch_job("c", &["b-devel"], &["c-devel"]),
        ],
    };
    let err = db.submit_batch(&req, &config(), &|_| true, 1.0).unwrap_err().to_string();
    assert!(
        err.contains("cycle") && err.contains("a-1.0-1 (job") && err.contains("c-1.0-1"),
        "{err}"
    );
    assert!(db.list(None, None).unwrap().is_empty(), "nothing of the batch was queued");

    let req = BatchRequest {
        batch: "chain".into(),
        jobs: vec![batch_job("base", &[], &["base-devel"]), batch_job("top", &["base-devel"], &[])],
    };
    let (ids, _) = db.submit_batch(&req, &config(), &|_| true, 1.0).unwrap();
    let a = ask(db, "b1", 1, vec![], 2.0).assignment.unwrap();
    let broken = Outcome::Failed(Failure { kind: FailureKind::Build, message: "error".into() });
    finish(db, a.job, "b1", a.attempt, broken).unwrap();
    db.tick(&config(), 3.0).unwrap();
    let top = db.job(ids[1]).unwrap();
    assert_eq!(top.state, JobState::Failed);
    let failure = top.failure.unwrap();
    assert_eq!(failure.kind, FailureKind::Dependency);
    assert!(failure.message.contains("base-1.0-1"), "{}", failure.message);
}

fn the_outbox_keeps_items_until_done_and_deliveries_are_seen_once(open: Open<'_>) {
    let mut db = open();
    let a = db.outbox_add("watch", "{\"n\":1}", 10.0).unwrap();
    let b = db.outbox_add("publish", "{\"n\":2}", 10.0).unwrap();
    let claimed = db.outbox_claim(11.0, 60.0, 10).unwrap();
    let ids: Vec<u64> = claimed.iter().map(|i| i.id).collect();
    assert_eq!(ids, [a, b]);
    assert_eq!((claimed[0].kind.as_str(), claimed[0].attempts), ("watch", 1));
    assert!(db.outbox_claim(12.0, 60.0, 10).unwrap().is_empty(), "leased to the first claim");
    db.outbox_done(a, 13.0).unwrap();
    db.outbox_later(b, 20.0, "{\"n\":3}", "the forge is down").unwrap();
    assert!(db.outbox_claim(19.0, 60.0, 10).unwrap().is_empty(), "not due yet");
    let again = db.outbox_claim(21.0, 60.0, 10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].payload.as_str(), again[0].attempts), (b, "{\"n\":3}", 2));
    // A restart (a new connection) loses nothing.
    drop(db);
    let mut db = open();
    assert_eq!(db.outbox_claim(1000.0, 60.0, 10).unwrap().len(), 1, "b is still there, a is done");
    assert!(db.record_delivery("github", "d-1", 1.0).unwrap());
    assert!(!db.record_delivery("github", "d-1", 2.0).unwrap(), "a replay");
    assert!(db.record_delivery("gitlab", "d-1", 2.0).unwrap(), "ids are per forge");
}
