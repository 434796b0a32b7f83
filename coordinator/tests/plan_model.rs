//! `discomy plan`'s model against a recorded run (coordinator/tests/fixtures/plan_lua_batch.json:
//! lua5.4, then lua-lpeg and lua-filesystem, built on a loopback farm; costs from each package's
//! recorded history): the prediction stays within the recorded tolerance (15 %) of the measured
//! makespan. No timing here: the test replays the model on the recorded figures. Also the
//! engine's dependency handling and bounds.

use discomy_coordinator::plan::{
    self, PlanOptions,
    engine::{lower_bound, simulate},
    fleet::SimNode,
    import, inventory,
    workload::{CostSource, SimBuild, SimUnit, Trace, default_builds},
};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/plan_lua_batch.json");

#[test]
fn the_model_predicts_the_recorded_batch_within_tolerance() {
    let fx: Value = serde_json::from_str(FIXTURE).unwrap();
    let fleet = inventory::parse(fx["inventory"].as_str().unwrap(), "fixture").unwrap();
    let history: Vec<plan::estimate::HistoryRecord> =
        serde_json::from_value(fx["history"].clone()).unwrap();
    let jobs = u32::try_from(fx["history_jobs"].as_u64().unwrap()).unwrap();
    let (workload, _) =
        import::parse_any(&fx["workload"].to_string(), "fixture", &history, jobs).unwrap();
    assert_eq!(workload.packages.iter().filter(|p| p.cost == CostSource::History).count(), 3);
    let report = plan::run(&fleet, &workload, &PlanOptions::default()).unwrap();
    let measured = fx["measured"]["median_s"].as_f64().unwrap();
    let tolerance = fx["tolerance"].as_f64().unwrap();
    let predicted = report.plan.expected_s;
    let error = (predicted - measured) / measured;
    eprintln!(
        "predicted {predicted:.2} s (bound {:.2} s), measured {measured:.2} s: {:+.1} %",
        report.plan.lower_bound_s,
        error * 100.0
    );
    assert!(
        error.abs() <= tolerance,
        "the model drifted: predicted {predicted:.2} s against a measured {measured:.2} s \
         ({:+.1} %, tolerance {:.0} %)",
        error * 100.0,
        tolerance * 100.0
    );
    assert!(report.plan.lower_bound_s <= predicted * 1.0001);
    assert_eq!(report.plan.critical_path.first().map(String::as_str), Some("lua5.4"));
}

fn unit(cpu_s: f64, key: u64) -> SimUnit {
    SimUnit { cpu_s, bytes_in: 0, work: (cpu_s * 1e6) as u64, bytes_out: 0, submit_s: 0.0, key }
}

fn build(name: &str, deps: Vec<usize>, pre: f64, units: Vec<SimUnit>, post: f64) -> SimBuild {
    SimBuild {
        name: name.into(),
        submitter: name.into(),
        start_s: 0.0,
        deps,
        pre_s: pre,
        units,
        post_s: post,
        jobs: 0,
    }
}

#[test]
fn builds_wait_for_their_dependencies_and_serial_parts_count() {
    let nodes = vec![SimNode::lan("n", 1.0, 4)];
    let units = |k: u64| (0..4).map(|i| unit(1.0, k * 10 + i)).collect::<Vec<_>>();
    let builds = vec![
        build("base", vec![], 2.0, units(1), 3.0),
        build("app", vec![0], 1.0, units(2), 1.0),
        build("doc", vec![], 0.5, vec![], 0.5),
    ];
    let bound = lower_bound(&builds, &nodes);
    // base: 2 + 1 + 3 = 6; app after it: 6 + 1 + 1 + 1 = 9 (plus transfers of 0 bytes).
    assert!((bound.chain_s - 9.0).abs() < 0.01, "{bound:?}");
    assert_eq!(bound.path, [0, 1]);
    // A warm policy (it has measured the node) packs the units: within 5 % of the bound.
    let mut policy = plan::discomy::Discomy::new(&nodes);
    let out = simulate(&builds, &nodes, &mut policy, false);
    assert!(out.makespan_s >= bound.seconds() - 1e-6, "{} < {bound:?}", out.makespan_s);
    assert!(out.makespan_s < 9.0 * 1.05, "{}", out.makespan_s);
}

#[test]
fn a_cycle_in_the_engine_never_finishes_and_has_no_bound() {
    let nodes = vec![SimNode::lan("n", 1.0, 2)];
    let builds = vec![
        build("a", vec![1], 0.0, vec![unit(1.0, 1)], 0.0),
        build("b", vec![0], 0.0, vec![unit(1.0, 2)], 0.0),
    ];
    assert!(lower_bound(&builds, &nodes).seconds().is_infinite());
    let mut policy = plan::discomy::Discomy::new(&nodes);
    assert!(simulate(&builds, &nodes, &mut policy, true).makespan_s.is_infinite());
}

#[test]
fn the_trace_replay_keeps_its_bound() {
    // The bench's uniform fleet: the figure bench/RESULTS.md records (2.991 s).
    let trace = Trace::lua().unwrap();
    let builds = trace.builds(&default_builds());
    let mut nodes = vec![SimNode::home("dev-a", 1.0, 2)];
    nodes.extend((1..=4).map(|i| SimNode::lan(&format!("n{i}"), 1.0, 4)));
    let bound = lower_bound(&builds, &nodes).seconds();
    assert!((bound - 2.991).abs() < 0.001, "{bound}");
}
