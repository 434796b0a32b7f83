//! Several coordinators on one PostgreSQL queue: separate connections (as separate processes
//! have) submitting, claiming and finishing at once must give every job to one builder per
//! attempt, lose no attempt and no event; a coordinator that dies mid-transaction loses nothing.
//! The rules themselves run on PostgreSQL in `ops::tests`.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use discomy_protocol::ops::{
    BlobRef, BuilderReport, Failure, FailureKind, FinishRequest, Held, JobSource, JobState,
    Outcome, SubmitRequest, Target,
};

use super::PgStore;
use crate::ops::job_queue::QueueConfig;
use crate::ops::store::QueueStore;
use crate::ops::tests::pg_database;

fn config() -> QueueConfig {
    // No backoff: infrastructure failures are retried at once, so the test ends quickly.
    QueueConfig { backoff_secs: 0.0, max_infra_failures: 100, ..Default::default() }
}

fn job(i: usize, submitter: &str) -> SubmitRequest {
    let srpm = BlobRef { name: format!("p{i}-1.0-1.src.rpm"), blake3: "a".repeat(64), size: 1 };
    SubmitRequest {
        source: JobSource::Srpm { srpm },
        target: Target { chroot: "rocky-9".into(), arch: "x86_64".into() },
        priority: (i % 3) as i32,
        batch: None,
        submitter: submitter.into(),
        timeout_secs: None,
        requires: Vec::new(),
        provides: Vec::new(),
    }
}

fn report(builder: &str, held: Vec<Held>) -> BuilderReport {
    BuilderReport {
        builder: builder.into(),
        slots: 2,
        memory_bytes: 64 << 30,
        disk_free_bytes: 64 << 30,
        arches: vec!["x86_64".into()],
        chroots: vec!["rocky-9".into()],
        held,
        wants_work: true,
    }
}

#[test]
fn coordinators_sharing_a_queue_give_each_attempt_to_one_builder() {
    let Some(database) = pg_database("shared_queue") else { return };
    const COORDINATORS: usize = 4;
    const BUILDERS: usize = 8;
    const JOBS: usize = 240;
    let stores: Vec<Arc<Mutex<PgStore>>> = (0..COORDINATORS)
        .map(|_| Arc::new(Mutex::new(PgStore::connect(&database, None).unwrap())))
        .collect();
    // Two submitters through two coordinators, at once.
    std::thread::scope(|s| {
        for (k, store) in stores.iter().take(2).enumerate() {
            s.spawn(move || {
                for i in (k..JOBS).step_by(2) {
                    let submitter = if k == 0 { "alice" } else { "bob" };
                    store
                        .lock()
                        .unwrap()
                        .submit(&job(i, submitter), &config(), &|_| true, 1.0)
                        .unwrap();
                }
            });
        }
    });
    // Builders report to the coordinators in turn (a load balancer), finish through another,
    // and fail one attempt in five as an infrastructure failure (retried).
    let given: Arc<Mutex<Vec<(u64, u32, String)>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    std::thread::scope(|s| {
        for b in 0..BUILDERS {
            let (stores, given) = (&stores, Arc::clone(&given));
            s.spawn(move || {
                let name = format!("b{b}");
                let mut turn = b;
                let mut idle = 0;
                while idle < 20 && Instant::now() < deadline {
                    turn += 1;
                    let store = &stores[turn % COORDINATORS];
                    let answer =
                        store.lock().unwrap().report(&report(&name, vec![]), &config(), 10.0);
                    let Some(a) = answer.unwrap().0.assignment else {
                        idle += 1;
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    idle = 0;
                    given.lock().unwrap().push((a.job, a.attempt, name.clone()));
                    let outcome = if (a.job + u64::from(a.attempt)) % 5 == 0 {
                        let message = "disk full".into();
                        Outcome::Failed(Failure { kind: FailureKind::Infrastructure, message })
                    } else {
                        Outcome::Succeeded
                    };
                    let req = FinishRequest { builder: name.clone(), attempt: a.attempt, outcome };
                    let other = &stores[(turn + 1) % COORDINATORS];
                    other.lock().unwrap().finish(a.job, &req, &config(), 3.0).unwrap();
                }
            });
        }
    });
    let mut store = stores[0].lock().unwrap();
    let jobs = store.list(None, None).unwrap();
    assert_eq!(jobs.len(), JOBS);
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded), "every job was finished");
    let given = given.lock().unwrap();
    let attempts: BTreeSet<(u64, u32)> = given.iter().map(|(j, a, _)| (*j, *a)).collect();
    assert_eq!(attempts.len(), given.len(), "no attempt given twice");
    for j in &jobs {
        let mine: Vec<u32> = given.iter().filter(|g| g.0 == j.id).map(|g| g.1).collect();
        assert_eq!(mine.len() as u32, j.attempt, "job {}: every attempt reached a builder", j.id);
    }
    // Events: unique increasing numbers, each job's history a chain of legal moves.
    let events = store.events(None, 0, 1_000_000).unwrap();
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    let mut last: BTreeMap<u64, JobState> = BTreeMap::new();
    for e in &events {
        assert_eq!(e.from, last.get(&e.job).copied(), "job {}: event {}", e.job, e.seq);
        last.insert(e.job, e.to);
    }
    let scheduled = events.iter().filter(|e| e.to == JobState::Scheduled).count();
    assert_eq!(scheduled, given.len(), "one event per attempt given");
}

#[test]
fn a_coordinator_dying_mid_transaction_loses_nothing() {
    let Some(database) = pg_database("crash") else { return };
    let mut a = PgStore::connect(&database, None).unwrap();
    let mut b = PgStore::connect(&database, None).unwrap();
    let same_priority = |i| SubmitRequest { priority: 0, ..job(i, "alice") };
    let ids: Vec<u64> =
        (0..3).map(|i| a.submit(&same_priority(i), &config(), &|_| true, 1.0).unwrap().0).collect();
    // A third coordinator is half-way through claiming the first job when it dies: its row is
    // locked and already changed, nothing committed.
    let mut dying = postgres::Client::connect(&database, postgres::NoTls).unwrap();
    let pid: i32 = dying.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    dying.batch_execute("BEGIN").unwrap();
    let first = ids[0] as i64;
    dying.execute("SELECT id FROM jobs WHERE id = $1 FOR UPDATE", &[&first]).unwrap();
    dying
        .execute("UPDATE jobs SET state = 'scheduled', builder = 'ghost' WHERE id = $1", &[&first])
        .unwrap();
    // Meanwhile other builders are not held up: the locked job is skipped.
    let got = b.report(&report("b1", vec![]), &config(), 2.0).unwrap().0.assignment.unwrap();
    assert_eq!(got.job, ids[1]);
    // The process dies (its connection goes): PostgreSQL rolls back and frees the row.
    let mut admin = postgres::Client::connect(&database, postgres::NoTls).unwrap();
    terminate(&mut admin, &[pid]);
    drop(dying);
    let held = vec![Held { job: got.job, attempt: 1, started: true }];
    let next = b.report(&report("b1", held), &config(), 3.0).unwrap().0.assignment.unwrap();
    assert_eq!((next.job, next.attempt), (ids[0], 1), "the dead coordinator's claim never was");
    // A surviving coordinator whose own connection is cut reconnects on its next request.
    let pid_a: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'discomy-coordinator' \
             AND datname = current_database()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    terminate(&mut admin, &pid_a);
    let _ = a.job(ids[2]); // The first request learns the connection is gone.
    let third = a.report(&report("b2", vec![]), &config(), 4.0).unwrap().0.assignment.unwrap();
    assert_eq!(third.job, ids[2]);
    for (job, builder) in [(ids[0], "b1"), (ids[1], "b1"), (ids[2], "b2")] {
        let req =
            FinishRequest { builder: builder.into(), attempt: 1, outcome: Outcome::Succeeded };
        assert_eq!(a.finish(job, &req, &config(), 5.0).unwrap().0.state, JobState::Succeeded);
    }
    let events = a.events(None, 0, 1000).unwrap();
    assert!(events.iter().all(|e| e.builder.as_deref() != Some("ghost")));
    assert_eq!(events.len(), 3 + 4 + 3, "submitted, scheduled, (running,) succeeded");
}

/// Ends these server processes, as the death of their clients would, and waits until they are
/// gone (termination is asynchronous).
fn terminate(admin: &mut postgres::Client, pids: &[i32]) {
    for pid in pids {
        admin.execute("SELECT pg_terminate_backend($1)", &[pid]).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let pids = pids.to_vec();
    while admin
        .query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&pids])
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(Instant::now() < deadline, "the server processes did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}
