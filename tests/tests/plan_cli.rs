//! `discomy plan --json` end to end: the binary on an inventory and a repoquery-style package
//! list (with a history file and the what-ifs), its JSON fields, the SVG plot, and a cycle
//! refused with exit status 2.

use std::fs;

use discomy_tests::{bin, clean_command};
use serde_json::Value;

const INVENTORY: &str = r#"
uplink = "10Gbit"
[[nodes]]
name = "rack"
count = 4
cores = 16
speed = 1.0
disk = "200GB"
link = "10Gbit"
latency_ms = 0.2
"#;

const PACKAGES: &str = "\
# repoquery --requires style
glibc:
zlib: glibc
openssl: glibc zlib
curl: openssl zlib
git: curl openssl zlib
";

#[test]
fn plan_prints_the_bound_the_makespan_the_bottleneck_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("fleet.toml");
    let pkgs = dir.path().join("packages.txt");
    let history = dir.path().join("history.json");
    let svg = dir.path().join("curve.svg");
    fs::write(&inv, INVENTORY).unwrap();
    fs::write(&pkgs, PACKAGES).unwrap();
    fs::write(&history, r#"[{"name": "openssl", "wall_s": 120.0, "artefact_bytes": 9000000}]"#)
        .unwrap();
    let out = clean_command(bin("discomy"))
        .arg("plan")
        .arg("--inventory")
        .arg(&inv)
        .arg("--packages")
        .arg(&pkgs)
        .arg("--history")
        .arg(&history)
        .args(["--add-nodes", "20x16", "--link", "1Gbit", "--json", "--plot"])
        .arg(&svg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "discomy plan failed: {stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["workload"]["packages"], 5);
    assert_eq!(r["workload"]["history"], 1);
    assert_eq!(r["workload"]["estimated"], 4);
    assert_eq!(r["fleet"]["nodes"], 4);
    assert_eq!(r["fleet"]["slots"], 64);
    let plan = &r["plan"];
    let f = |v: &Value| v.as_f64().unwrap();
    let (bound, expected) = (f(&plan["lower_bound_s"]), f(&plan["expected_s"]));
    assert!(bound > 0.0 && expected >= bound * 0.999, "bound {bound}, expected {expected}");
    assert_eq!(
        plan["critical_path"],
        serde_json::json!(["glibc", "zlib", "openssl", "curl", "git"]),
        "the longest chain"
    );
    assert!(
        ["cpu", "serial", "network", "storage"].contains(&plan["bottleneck"].as_str().unwrap())
    );
    for k in ["object_cache_bytes", "toolchain_bytes", "artefact_bytes", "repository_bytes"] {
        assert!(plan["storage"][k].as_u64().unwrap() > 0, "{k}");
    }
    let what_if = r["what_if"].as_array().unwrap();
    assert_eq!(what_if.len(), 2);
    assert_eq!(what_if[0]["plan"]["nodes"], 24);
    assert!(f(&what_if[0]["plan"]["work_s"]) <= f(&plan["work_s"]));
    assert!(f(&what_if[1]["plan"]["network_s"]) > f(&plan["network_s"]), "1 Gbit/s is slower");
    let curve = r["curve"].as_array().unwrap();
    assert!(curve.len() >= 3, "{curve:?}");
    let doc = fs::read_to_string(&svg).unwrap();
    assert!(doc.starts_with("<svg") && doc.contains("lower bound"), "{}", &doc[..200]);

    // A cycle: refused, named, exit status 2.
    fs::write(&pkgs, "a: b\nb: a\n").unwrap();
    let out = clean_command(bin("discomy"))
        .arg("plan")
        .arg("--inventory")
        .arg(&inv)
        .arg("--packages")
        .arg(&pkgs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cycle") && stderr.contains("a -> b -> a"), "{stderr}");
}
