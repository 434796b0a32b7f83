//! Tests of [`super::Feed`]: what a monitor is told for a farm's snapshot and events.
#![allow(clippy::unwrap_used)]

use discomy_protocol::coordinator::{FarmStatus, LoadReport, NodeStatus, SubmitterStatus};

use super::*;

fn node(id: u64, host: &str, slots: u32, assigned: u32) -> NodeStatus {
    NodeStatus {
        id,
        host: host.into(),
        address: format!("10.0.0.{id}:3633"),
        slots,
        cores: slots,
        assigned,
        load: LoadReport { foreign_load: 120, ..LoadReport::default() },
        speed_cpu_bps: 2_500_000.0,
        ..NodeStatus::default()
    }
}

fn farm(nodes: Vec<NodeStatus>) -> FarmStatus {
    FarmStatus { farm: "f".into(), nodes, ..FarmStatus::default() }
}

#[test]
fn stats_text_matches_icecreams_layout() {
    // handle_monitor_stats without a STATS: Name, IP, MaxJobs, NoRemote, Platform, Version,
    // Features, Speed (%f), Load.
    let t = stats_text("n1", "10.0.0.1", 4, false, "x86_64", 2500.0, 120);
    assert_eq!(
        t,
        "Name:n1\nIP:10.0.0.1\nMaxJobs:4\nNoRemote:false\nPlatform:x86_64\nVersion:44\n\
         Features:--\nSpeed:2500.000000\nLoad:120\n"
    );
    // A host name cannot add lines (icemon splits on '\n').
    assert!(
        stats_text("a\nState:Offline", "", 0, true, "p", f64::NAN, 0)
            .starts_with("Name:a?State:Offline\nIP:\nMaxJobs:0\nNoRemote:true\n")
    );
    assert_eq!(ip_of("[::1]:3633"), "::1");
    assert_eq!(ip_of("build-7:3633"), "build-7");
}

#[test]
fn snapshot_then_changes_only() {
    let mut feed = Feed::new("x86_64");
    let first = feed.sync(&farm(vec![node(5, "n5", 4, 0), node(9, "n9", 2, 0)]), 0);
    assert_eq!(first.len(), 2);
    let Message::MonStats { host_id, text } = &first[0] else { panic!("{first:?}") };
    assert_eq!(*host_id, 1);
    assert!(text.starts_with("Name:n5\nIP:10.0.0.5\nMaxJobs:4\n"), "{text}");
    assert!(text.ends_with("Speed:2500.000000\nLoad:120\n"), "{text}");
    assert_eq!(feed.host_id(9), Some(2));
    // Nothing changed: nothing sent.
    assert!(feed.sync(&farm(vec![node(5, "n5", 4, 0), node(9, "n9", 2, 0)]), 100).is_empty());
    // A load change and a departure.
    let mut busy = node(5, "n5", 4, 0);
    busy.load.foreign_load = 900;
    let next = feed.sync(&farm(vec![busy]), 200);
    assert_eq!(next.len(), 2);
    assert_eq!(next[0], Message::MonStats { host_id: 2, text: "State:Offline\n".into() });
    assert!(
        matches!(&next[1], Message::MonStats { host_id: 1, text } if text.ends_with("Load:900\n"))
    );
}

#[test]
fn a_placement_is_asked_then_begun_then_done() {
    let mut feed = Feed::new("x86_64");
    let join =
        FarmEvent::NodeJoined { node: 3, host: "n3".into(), address: "1.2.3.4:1".into(), slots: 8 };
    let msgs = feed.event(&join, 0, 0);
    assert!(
        matches!(&msgs[..], [Message::MonStats { host_id: 1, text }] if text.contains("MaxJobs:8\n"))
    );
    // The submitter runs no worker: announced as a host with no slots, then the job.
    let placed = FarmEvent::UnitPlaced { job: 40, node: 3, submitter: "laptop".into() };
    let msgs = feed.event(&placed, 10, 1_700_000_000);
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(matches!(&msgs[0], Message::MonStats { host_id: 2, text }
        if text.starts_with("Name:laptop\nIP:\nMaxJobs:0\nNoRemote:true\n")));
    assert_eq!(
        msgs[1],
        Message::MonGetCs { filename: "job-40".into(), lang: lang::CXX, job_id: 1, client_id: 2 }
    );
    assert_eq!(msgs[2], Message::MonJobBegin { job_id: 1, stime: 1_700_000_000, host_id: 1 });
    let done = feed.event(&FarmEvent::UnitDone { job: 40, ok: true, wall_ms: 1234 }, 20, 0);
    assert_eq!(
        done,
        [Message::MonJobDone(JobDone { job_id: 1, real_ms: 1234, ..JobDone::default() })]
    );
    // A second end of the same unit, or one never shown, says nothing.
    assert!(feed.event(&FarmEvent::UnitDone { job: 40, ok: false, wall_ms: 1 }, 30, 0).is_empty());
    assert!(feed.event(&FarmEvent::UnitDone { job: 41, ok: true, wall_ms: 1 }, 30, 0).is_empty());
    // A submitter that is also a node is that node's host.
    let local = FarmEvent::UnitPlaced { job: 42, node: 3, submitter: "n3".into() };
    let msgs = feed.event(&local, 40, 0);
    assert!(matches!(&msgs[0], Message::MonGetCs { job_id: 2, client_id: 1, .. }), "{msgs:?}");
    // A placement on a node the monitor does not know is not shown.
    let unknown = FarmEvent::UnitPlaced { job: 43, node: 99, submitter: "n3".into() };
    assert!(feed.event(&unknown, 50, 0).is_empty());
}

#[test]
fn lost_nodes_and_cancelled_units_end_their_jobs() {
    let mut feed = Feed::new("x86_64");
    feed.sync(&farm(vec![node(1, "a", 2, 0), node(2, "b", 2, 0)]), 0);
    feed.event(&FarmEvent::UnitPlaced { job: 10, node: 1, submitter: "b".into() }, 0, 0);
    feed.event(&FarmEvent::UnitPlaced { job: 11, node: 2, submitter: "b".into() }, 0, 0);
    assert_eq!(feed.jobs(), 2);
    // Node 1 leaves: its job ends with 255, then it goes offline.
    let msgs = feed.event(&FarmEvent::NodeLeft { node: 1 }, 10, 0);
    assert_eq!(
        msgs,
        [
            Message::MonJobDone(JobDone { job_id: 1, exitcode: LOST, ..JobDone::default() }),
            Message::MonStats { host_id: 1, text: "State:Offline\n".into() },
        ]
    );
    // Node 2 has nothing assigned (its agent went away): ended once it is stale.
    assert!(feed.sync(&farm(vec![node(2, "b", 2, 0)]), STALE_JOB_MS - 1).is_empty());
    let msgs = feed.sync(&farm(vec![node(2, "b", 2, 0)]), STALE_JOB_MS);
    assert_eq!(
        msgs,
        [Message::MonJobDone(JobDone { job_id: 2, exitcode: LOST, ..JobDone::default() })]
    );
    assert_eq!(feed.jobs(), 0);
}

#[test]
fn submitters_in_the_snapshot_are_announced_once() {
    let mut feed = Feed::new("x86_64");
    let mut status = farm(vec![node(1, "a", 2, 0)]);
    status.submitters = vec![
        SubmitterStatus { host: "ci".into(), running: 1, queued: 0 },
        SubmitterStatus { host: "a".into(), running: 1, queued: 0 },
    ];
    let msgs = feed.sync(&status, 0);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        matches!(&msgs[1], Message::MonStats { host_id: 2, text } if text.starts_with("Name:ci\n"))
    );
    assert!(feed.sync(&status, 10).is_empty());
    // "ci" starts a worker: the submitter's host goes, the node's comes.
    let join =
        FarmEvent::NodeJoined { node: 7, host: "ci".into(), address: "x:1".into(), slots: 1 };
    let msgs = feed.event(&join, 20, 0);
    assert_eq!(msgs[0], Message::MonStats { host_id: 2, text: "State:Offline\n".into() });
    assert!(matches!(&msgs[1], Message::MonStats { host_id: 3, .. }));
}
