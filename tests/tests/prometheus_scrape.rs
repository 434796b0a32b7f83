//! `/metrics` read by a real Prometheus (Debian's package) while a farm builds Lua: a coordinator,
//! two workers that joined it and an agent asking it for placements, each with
//! `--metrics-listen`; Prometheus scrapes them every second. After the build, Prometheus' HTTP
//! API must give the counts of `discomy run`'s summary (units by outcome from the agent, units
//! finished from the coordinator and compiled by the workers), the nodes' slots, and the
//! histograms' counts; the scrape cost (Prometheus' own `scrape_duration_seconds`) is printed.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use discomy_tests::{
    Agent, BUILD_TIMEOUT, MAKE_JOBS, Proc, Worker, clean_command, discomy_run, extract_lua,
    free_port, read_summary, start_coordinator, wait_nodes,
};

/// Prometheus on `listen`, scraping `targets` (job name, `IP:PORT`) every second.
fn start_prometheus(dir: &Path, listen: SocketAddr, targets: &[(&str, String)]) -> Proc {
    let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n");
    config.push_str("scrape_configs:\n");
    for (job, target) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        ));
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = clean_command("prometheus");
    cmd.arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={listen}"));
    Proc::spawn("prometheus", &mut cmd, dir)
}

/// An instant query's result vector; empty while Prometheus is not ready or has no sample.
fn query(prom: SocketAddr, promql: &str) -> Vec<serde_json::Value> {
    let url = format!("http://{prom}/api/v1/query");
    let Ok(mut resp) = ureq::get(&url).query("query", promql).call() else { return Vec::new() };
    let Ok(text) = resp.body_mut().read_to_string() else { return Vec::new() };
    let Ok(body) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    body["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The value of a query with one series (a `sum(…)`), if any.
fn scalar(prom: SocketAddr, promql: &str) -> Option<f64> {
    let result = query(prom, promql);
    let first = result.first()?;
    first["value"][1].as_str()?.parse().ok()
}

/// The time (Unix seconds) of the oldest of the targets' latest scrapes, once all are up.
fn last_scrape(prom: SocketAddr, jobs: usize) -> Option<f64> {
    let ups = query(prom, "up");
    if ups.len() < jobs || ups.iter().any(|u| u["value"][1].as_str() != Some("1")) {
        return None;
    }
    let times = query(prom, "timestamp(up)");
    let times: Option<Vec<f64>> =
        times.iter().map(|t| t["value"][1].as_str().and_then(|v| v.parse().ok())).collect();
    times?.into_iter().reduce(f64::min)
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn prometheus_sees_what_the_build_summary_says() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tree = extract_lua(dir);

    let coord_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (_coord, addr) = start_coordinator(
        dir,
        "coordinator",
        "127.0.0.1:0",
        &["--metrics-listen", &coord_metrics.to_string()],
    );
    let caddr = addr.to_string();
    let mut targets = vec![("coordinator", coord_metrics.to_string())];
    let mut workers = Vec::new();
    for i in 0..2 {
        let m = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
        let flags = ["--coordinator", &caddr, "--metrics-listen", &m];
        workers.push(Worker::start_with(dir, &format!("worker{i}"), 2, &flags));
        targets.push(if i == 0 { ("worker0", m) } else { ("worker1", m) });
    }
    wait_nodes(addr, 2, Duration::from_secs(20));
    let agent_metrics = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
    let agent = Agent::start_with(
        dir,
        "agent",
        "",
        &[],
        &["--coordinator", &caddr, "--metrics-listen", &agent_metrics],
    );
    targets.push(("agent", agent_metrics.clone()));

    let prom_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let _prom = start_prometheus(&prom_dir, prom_addr, &targets);
    let up = Instant::now();
    while last_scrape(prom_addr, targets.len()).is_none() {
        assert!(up.elapsed() < Duration::from_secs(60), "Prometheus never scraped every target");
        std::thread::sleep(Duration::from_millis(250));
    }

    let summary_path = dir.join("summary.json");
    let mut run = discomy_run(&tree, dir);
    run.env("DISCOMY_SOCKET", &agent.socket)
        .env("DISCOMY_CACHE_DIR", dir.join("cache"))
        .arg("--summary-json")
        .arg(&summary_path)
        .args(["--", "make", "-C", "src", MAKE_JOBS, "linux"]);
    let mut build = Proc::spawn("discomy-run", &mut run, dir);
    let status = build.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "the build failed:\n{}", build.logs(40));
    let ended = now();
    let summary = read_summary(&summary_path);
    eprintln!("[e2e] summary: {}", summary.raw.trim());
    assert!(summary.remote > 0, "nothing went to the farm: {}", summary.raw);

    // Wait for a scrape of every target after the build's end.
    let wait = Instant::now();
    while last_scrape(prom_addr, targets.len()).is_none_or(|t| t < ended + 0.5) {
        assert!(wait.elapsed() < Duration::from_secs(20), "no scrape after the build");
        std::thread::sleep(Duration::from_millis(250));
    }

    let get = |q: &str| scalar(prom_addr, q).unwrap_or_else(|| panic!("no value for {q}"));
    let outcome = |o: &str| get(&format!("sum(discomy_agent_units_total{{outcome=\"{o}\"}})"));
    assert_eq!(outcome("remote"), summary.remote as f64, "remote units");
    assert_eq!(outcome("local"), summary.local as f64, "local units");
    assert_eq!(outcome("fallback"), summary.fallback as f64, "fallback units");
    assert_eq!(outcome("cache"), summary.cache_hits as f64, "cache hits");
    let conftest = summary.local_reasons.values().sum::<u64>() as f64;
    assert_eq!(get("sum(discomy_agent_local_units_total) or vector(0)"), conftest, "by reason");
    // Every remote unit was placed by the coordinator and compiled by a worker (a hedge could
    // compile one twice; none is expected on an idle loopback farm).
    let done = get("sum(discomy_coordinator_units_done_total{result=\"ok\"})");
    assert_eq!(done, summary.remote as f64, "units the coordinator saw finish");
    let compiled = get("sum(discomy_worker_compile_seconds_count)");
    assert!(compiled >= summary.remote as f64, "workers compiled {compiled}");
    let placed = get("sum(discomy_coordinator_queue_wait_seconds_count)");
    assert!(placed >= summary.remote as f64, "placements timed: {placed}");
    let answered = get("sum(discomy_agent_unit_seconds_count{result=\"compiled\"})");
    assert_eq!(answered, summary.remote as f64, "units the agent answered with an object");
    assert!(get("sum(discomy_agent_shipped_bytes_total{direction=\"sent\"})") > 0.0);
    assert_eq!(get("sum(discomy_node_slots)"), 4.0, "two 2-slot nodes");
    assert_eq!(get("discomy_coordinator_nodes"), 2.0);
    assert_eq!(get("sum(discomy_worker_slots)"), 4.0);

    let cost = query(prom_addr, "scrape_duration_seconds");
    let costs: Vec<String> = cost
        .iter()
        .map(|s| format!("{}={}", s["metric"]["job"].as_str().unwrap_or("?"), s["value"][1]))
        .collect();
    eprintln!("[e2e] scrape_duration_seconds: {}", costs.join(" "));
    drop(workers);
}
