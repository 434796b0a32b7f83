//! `discomy plan`'s inputs: inventories (TOML and JSON), Debian `Sources` and repoquery lists,
//! workload JSON; hostile input refused or reported (cycles, absurd sizes, deep chains).

use discomy_coordinator::plan::{self, PlanError, PlanOptions, import, inventory, workload};

fn workload_of(text: &str) -> workload::Workload {
    import::parse_any(text, "test", &[], 4).expect("parses").0
}

fn small_fleet() -> plan::fleet::PlanFleet {
    inventory::parse("[[nodes]]\nname = \"n\"\ncount = 2\ncores = 4\n", "inv").expect("inventory")
}

#[test]
fn inventories_parse_in_toml_and_json() {
    let toml = r#"
uplink = "10Gbit"
[[nodes]]
name = "rack"
count = 3
cores = 16
slots = 12
speed = 1.5
memory = "64GB"
disk = "500GB"
link = "1Gbit"
latency_ms = 0.2
[[nodes]]
name = "old"
cores = 4
speed = 0.5
"#;
    let f = inventory::parse(toml, "inv.toml").expect("toml");
    assert_eq!(f.nodes.len(), 4);
    assert_eq!(f.nodes[0].name, "rack-1");
    assert_eq!(f.nodes[0].slots, 12);
    assert_eq!(f.nodes[0].bandwidth, 125e6);
    assert_eq!(f.nodes[0].disk_bytes, 500 << 30);
    assert_eq!(f.nodes[3].slots, 4);
    assert_eq!(f.uplink, Some(1.25e9));
    assert!(f.assumed.iter().any(|a| a.contains("old")), "{:?}", f.assumed);
    let json = r#"{"nodes": [{"name": "a", "cores": 8, "link": "100Mbit"}]}"#;
    let f = inventory::parse(json, "inv.json").expect("json");
    assert_eq!((f.nodes.len(), f.nodes[0].slots, f.nodes[0].bandwidth), (1, 8, 12.5e6));
}

#[test]
fn absurd_inventories_are_refused() {
    for (bad, why) in [
        ("[[nodes]]\nname = \"n\"\ncount = 1000000000\ncores = 4\n", "too many nodes"),
        (
            "[[nodes]]\nname = \"n\"\ncount = 18446744073709551615\ncores = 4\n[[nodes]]\nname = \"m\"\ncount = 5\ncores = 4\n",
            "count overflow",
        ),
        ("[[nodes]]\nname = \"n\"\ncores = 0\n", "no cores"),
        ("[[nodes]]\nname = \"n\"\ncores = 100000\n", "absurd cores"),
        ("[[nodes]]\nname = \"n\"\ncores = 4\nspeed = -1.0\n", "negative speed"),
        ("[[nodes]]\nname = \"n\"\ncores = 4\nspeed = 1e300\n", "absurd speed"),
        ("[[nodes]]\nname = \"n\"\ncores = 4\ndisk = \"9999999PB\"\n", "absurd disk"),
        ("[[nodes]]\nname = \"n\"\ncores = 4\nlink = \"warp 9\"\n", "unparsable link"),
        ("[[nodes]]\nname = \"n\"\ncores = 4\nlatency_ms = -3.0\n", "negative latency"),
        ("[[nodes]]\nname = \"n\"\ncores = 4\ncolour = \"red\"\n", "unknown field"),
        ("nodes = []\n", "no nodes"),
        ("{\"nodes\": [{\"name\": \"n\", \"cores\": 4,", "truncated JSON"),
    ] {
        let got = inventory::parse(bad, "inv");
        assert!(got.is_err(), "{why}: accepted {bad:?}");
    }
}

#[test]
fn repoquery_lists_parse_and_drop_outside_dependencies() {
    let (w, notes) = import::parse_any(
        "# a comment\nglibc:\nzlib: glibc\ncurl: zlib openssl glibc\nlonely\n",
        "l",
        &[],
        4,
    )
    .expect("parses");
    let names: Vec<&str> = w.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["glibc", "zlib", "curl", "lonely"]);
    assert_eq!(w.packages[2].deps, ["zlib", "glibc"]);
    assert!(notes.iter().any(|n| n.contains("1 dependencies")), "{notes:?}");
    assert!(w.packages.iter().all(|p| p.cost == workload::CostSource::Estimate));
    assert!(import::parse_repoquery("two words: dep\n").is_err());
    assert!(import::parse_repoquery("a\na\n").is_err(), "a package listed twice");
}

#[test]
fn debian_sources_map_build_depends_to_source_packages() {
    let sources = "\
Package: lua5.4
Binary: liblua5.4-0, liblua5.4-dev, lua5.4
Build-Depends: debhelper-compat (= 13), libreadline-dev
Files:
 0123 2246 lua5.4_5.4.4-3.dsc
 4567 360876 lua5.4_5.4.4.orig.tar.gz
 89ab 9000 lua5.4_5.4.4-3.debian.tar.xz

Package: lua-lpeg
Binary: lua-lpeg, lua-lpeg-dev
Build-Depends: debhelper-compat (= 13), dh-lua (>= 21),
 liblua5.4-dev [linux-any] | liblua5.3-dev,
 lua5.4:native <!nocheck>
Files:
 cdef 100000 lua-lpeg_1.0.2.orig.tar.gz

Package: debhelper
Binary: debhelper, dh-lua, debhelper-compat
Build-Depends: po4a
Files:
 1111 2000000 debhelper_13.tar.xz

Package: lua5.4
Binary: liblua5.4-0, liblua5.4-dev, lua5.4
Build-Depends: debhelper-compat (= 13), cmake
Files:
 4567 400000 lua5.4_5.4.6.orig.tar.gz
";
    let list = import::parse_debian_sources(sources).expect("parses");
    let names: Vec<&str> = list.packages.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["lua5.4", "lua-lpeg", "debhelper"], "a later stanza replaces the earlier");
    let (_, deps, facts) = &list.packages[1];
    assert_eq!(
        deps,
        &["debhelper", "lua5.4"],
        "binaries mapped to sources, alternatives, qualifiers"
    );
    assert_eq!(facts.tar_bytes, Some(100_000));
    let (_, _, lua) = &list.packages[0];
    assert_eq!(lua.tar_bytes, Some(400_000), "the update's tarball");
    assert_eq!(lua.build_system, plan::estimate::BuildSystem::Cmake);
    assert!(list.notes.iter().any(|n| n.contains("outside")), "po4a: {:?}", list.notes);
}

#[test]
fn cycles_are_reported_not_looped_and_can_be_broken() {
    let w = workload_of("a: c\nb: a\nc: b\nd: d\ne: a\n");
    match plan::run(&small_fleet(), &w, &PlanOptions::default()) {
        Err(PlanError::Cycle(c)) => {
            assert_eq!(c.first(), c.last(), "{c:?}");
            assert_eq!(c.len(), 4, "{c:?}");
        }
        other => panic!("expected a cycle, got {other:?}"),
    }
    let opts = PlanOptions { break_cycles: true, ..PlanOptions::default() };
    let report = plan::run(&small_fleet(), &w, &opts).expect("broken cycles plan");
    assert!(
        report.notes.iter().any(|n| n.contains("dropping 1 dependencies")),
        "{:?}",
        report.notes
    );
    assert!(report.plan.expected_s.is_finite());
}

#[test]
fn a_deep_chain_does_not_overflow_the_stack() {
    let mut text = String::from("p0:\n");
    for i in 1..50_000 {
        text.push_str(&format!("p{i}: p{}\n", i - 1));
    }
    let mut w = workload_of(&text);
    // Close the cycle over the whole chain.
    w.packages[0].deps.push("p49999".into());
    let cycle = import::find_cycle(&w).expect("the long cycle");
    assert_eq!(cycle.len(), 50_001);
    assert_eq!(import::break_cycles(&mut w).len(), 1);
    assert!(import::find_cycle(&w).is_none());
}

#[test]
fn absurd_workloads_are_refused() {
    let base = r#"{"packages": [{"name": "x", "compile_cpu_s": CPU, "units": UNITS}]}"#;
    for (cpu, units) in [("1e300", "10"), ("-1", "10"), ("10", "4000000000"), ("10", "0")] {
        let text = base.replace("CPU", cpu).replace("UNITS", units);
        let w = workload_of(&text);
        let got = plan::run(&small_fleet(), &w, &PlanOptions::default());
        assert!(matches!(got, Err(PlanError::Invalid(_))), "{cpu} s, {units} units: {got:?}");
    }
    let huge = "x".repeat(import::MAX_LIST_BYTES + 1);
    assert!(import::parse_any(&huge, "huge", &[], 4).is_err());
    assert!(import::parse_any("", "empty", &[], 4).is_err());
}

#[test]
fn history_replaces_estimates_and_says_so() {
    let history = [plan::estimate::HistoryRecord {
        name: "zlib".into(),
        wall_s: 40.0,
        serial_s: None,
        artefact_bytes: 5,
    }];
    let (w, _) = import::parse_any("glibc:\nzlib: glibc\n", "l", &history, 4).expect("parses");
    let zlib = &w.packages[1];
    assert_eq!(zlib.cost, workload::CostSource::History);
    assert_eq!(zlib.configure_s + zlib.serial_s, 10.0);
    assert_eq!(zlib.compile_cpu_s, 120.0);
    assert_eq!(w.packages[0].cost, workload::CostSource::Estimate);
    let report = plan::run(&small_fleet(), &w, &PlanOptions::default()).expect("plans");
    assert_eq!((report.workload.history, report.workload.estimated), (1, 1));
    assert_eq!(report.workload.estimated_packages, ["glibc"]);
}

#[test]
fn the_latest_history_record_of_a_package_applies() {
    let record = |wall_s: f64| plan::estimate::HistoryRecord {
        name: "zlib".into(),
        wall_s,
        serial_s: Some(0.0),
        artefact_bytes: 0,
    };
    // A later record replaces an earlier one, even an unusable one (the package is estimated).
    let history = [record(40.0), record(20.0)];
    let (w, _) = import::parse_any("glibc:\nzlib: glibc\n", "l", &history, 1).expect("parses");
    assert_eq!(w.packages[1].compile_cpu_s, 20.0);
    let history = [record(40.0), record(f64::NAN)];
    let (w, _) = import::parse_any("glibc:\nzlib: glibc\n", "l", &history, 1).expect("parses");
    assert_eq!(w.packages[1].cost, workload::CostSource::Estimate);
}
