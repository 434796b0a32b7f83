//! `discomy-bench queue`: the build queue's throughput through the real HTTP API of real
//! `discomy-coordinator` processes, on SQLite (one coordinator, the default store) and on
//! PostgreSQL (a private, durable server from Debian's programs; one or more coordinators on
//! the same database and the same state directory). Measures jobs accepted per second
//! (`POST /api/v1/jobs` from a few client threads, after one small source upload), jobs
//! dispatched per second (simulated builders: `POST /builders/report`, then `/finish`, no
//! rpmbuild), and the scheduling cost per job: the coordinators' CPU time (and PostgreSQL's
//! with it, whole machine) per job. Checks every job was given out exactly once and succeeded.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use discomy_coordinator::ops::pg::scratch::ScratchPostgres;
use serde_json::{Value, json};

use crate::proc::{Daemon, Job, find_discomy_bin};
use crate::stats::{median, write_json};

/// `queue` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Jobs per run.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Client threads submitting.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Simulated builders (threads), each with one slot.
    #[arg(long, default_value_t = 8)]
    pub builders: usize,
    /// Coordinator processes sharing the PostgreSQL queue (clients and builders spread over them).
    #[arg(long, default_value_t = 2)]
    pub pg_coordinators: usize,
    /// Runs per configuration (figures are medians).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the PostgreSQL runs.
    #[arg(long)]
    pub no_postgres: bool,
    /// The daemon binary (default: beside this one).
    #[arg(long)]
    pub coordinator: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One run's figures.
struct Run {
    accepted_per_s: f64,
    dispatched_per_s: f64,
    daemon_cpu_us_per_job: f64,
    machine_cpu_us_per_job: f64,
}

/// Runs the benchmark and prints a table.
pub fn run(args: &Args) -> Result<i32> {
    let bin = match &args.coordinator {
        Some(p) => p.clone(),
        None => find_discomy_bin("discomy-coordinator")?,
    };
    let mut configs: Vec<(String, usize)> = vec![("sqlite".into(), 1)];
    let pg = if args.no_postgres {
        None
    } else {
        configs.push(("postgres".into(), 1));
        if args.pg_coordinators > 1 {
            configs.push(("postgres".into(), args.pg_coordinators));
        }
        Some(ScratchPostgres::start(true).context("starting a private PostgreSQL server")?)
    };
    let mut results = Vec::new();
    println!(
        "queue: {} jobs, {} clients, {} builders, {} runs each",
        args.jobs, args.clients, args.builders, args.runs
    );
    println!(
        "| store | coordinators | accepted jobs/s | dispatched jobs/s | daemon CPU µs/job | machine CPU µs/job |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (n, (store, coordinators)) in configs.iter().enumerate() {
        let mut runs = Vec::new();
        for r in 0..args.runs {
            let database = match &pg {
                Some(server) if store == "postgres" => {
                    Some(server.create_database(&format!("bench_{n}_{r}"))?)
                }
                _ => None,
            };
            let run = one_run(args, &bin, database.as_deref(), *coordinators)
                .with_context(|| format!("{store} × {coordinators}, run {}", r + 1))?;
            eprintln!(
                "  {store} × {coordinators} run {}: {:.0} accepted/s, {:.0} dispatched/s",
                r + 1,
                run.accepted_per_s,
                run.dispatched_per_s
            );
            runs.push(run);
        }
        let m = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
        let all = |f: fn(&Run) -> f64| {
            runs.iter().map(|r| format!("{:.0}", f(r))).collect::<Vec<_>>().join(" / ")
        };
        println!(
            "| {store} | {coordinators} | {}; **{:.0}** | {}; **{:.0}** | {:.0} | {:.0} |",
            all(|r| r.accepted_per_s),
            m(|r| r.accepted_per_s),
            all(|r| r.dispatched_per_s),
            m(|r| r.dispatched_per_s),
            m(|r| r.daemon_cpu_us_per_job),
            m(|r| r.machine_cpu_us_per_job),
        );
        results.push(json!({
            "store": store, "coordinators": coordinators,
            "accepted_per_s": runs.iter().map(|r| r.accepted_per_s).collect::<Vec<_>>(),
            "dispatched_per_s": runs.iter().map(|r| r.dispatched_per_s).collect::<Vec<_>>(),
            "daemon_cpu_us_per_job": m(|r| r.daemon_cpu_us_per_job),
            "machine_cpu_us_per_job": m(|r| r.machine_cpu_us_per_job),
        }));
    }
    if let Some(path) = &args.json {
        write_json(path, &json!({ "jobs": args.jobs, "results": results }))?;
    }
    Ok(0)
}

fn one_run(args: &Args, bin: &Path, database: Option<&str>, coordinators: usize) -> Result<Run> {
    let scratch = crate::proc::temp_dir("discomy-queue-bench")?;
    let state = scratch.path().join("state");
    let config = scratch.path().join("coordinator.toml");
    let mut toml = format!("[ops]\nstate_dir = {:?}\n", state.display().to_string());
    if let Some(database) = database {
        toml.push_str(&format!("database = {database:?}\n"));
    }
    // Nobody reports late here; long leases keep `tick` from expiring anything mid-run.
    toml.push_str("[ops.queue]\nlease_secs = 600.0\n");
    std::fs::write(&config, toml)?;
    let mut daemons = Vec::new();
    let mut bases = Vec::new();
    for i in 0..coordinators {
        let addr_file = scratch.path().join(format!("api-{i}.addr"));
        let job = Job::new(bin, scratch.path())
            .args(["--listen", "127.0.0.1:0", "--no-mdns", "--api-listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&config)
            .arg("--api-addr-file")
            .arg(&addr_file)
            .env("RUST_LOG", "warn");
        let console = scratch.path().join(format!("coordinator-{i}.log"));
        let mut daemon = Daemon::spawn("discomy-coordinator", &job, &console)?;
        let addr = daemon.wait_for("the API address", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&addr_file).ok()?;
            text.ends_with('\n').then(|| text.trim().to_owned())
        })?;
        bases.push(format!("http://{addr}/api/v1"));
        daemons.push(daemon);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    // One small source, uploaded once; every job builds it.
    let content = b"a source RPM, as far as the queue can tell";
    let hex = blake3::hash(content).to_hex().to_string();
    let url = format!("{}/blobs/{hex}?size={}", bases[0], content.len());
    let resp = agent.put(&url).send(&content[..]).context("uploading the source")?;
    check(resp, &url)?;
    let srpm = json!({ "name": "pkg-1.0-1.src.rpm", "blake3": hex, "size": content.len() });

    let pids: Vec<i32> = daemons.iter().map(Daemon::pid).collect();
    let cpu = || {
        pids.iter().map(|&p| crate::coord_scale::cpu_s(u32::try_from(p).unwrap_or(0))).sum::<f64>()
    };

    // Accepting: the clients share the jobs, each through its coordinator.
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..args.clients)
            .map(|c| {
                let (agent, next, bases, srpm) = (&agent, &next, &bases, &srpm);
                s.spawn(move || -> Result<()> {
                    let url = format!("{}/jobs", bases[c % bases.len()]);
                    while next.fetch_add(1, Ordering::Relaxed) < args.jobs {
                        let body = json!({
                            "source": { "kind": "srpm", "srpm": srpm },
                            "target": { "chroot": "rocky-9", "arch": "x86_64" },
                            "submitter": format!("client{c}"),
                        });
                        check(post(agent, &url, &body)?, &url)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let accept_s = start.elapsed().as_secs_f64();

    // Dispatching: builders ask, get a job, finish it, ask again, until nothing is left.
    let given: Mutex<Vec<(u64, u64)>> = Mutex::default();
    let (cpu0, machine0) = (cpu(), machine_cpu_s());
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..args.builders)
            .map(|b| {
                let (agent, bases, given) = (&agent, &bases, &given);
                s.spawn(move || -> Result<()> {
                    let name = format!("builder{b}");
                    let base = &bases[b % bases.len()];
                    let report = json!({
                        "builder": name, "slots": 1, "memory_bytes": 8u64 << 30,
                        "disk_free_bytes": 100u64 << 30, "arches": ["x86_64"],
                        "chroots": ["rocky-9"], "held": [],
                    });
                    let url = format!("{base}/builders/report");
                    loop {
                        let answer = read_json(check(post(agent, &url, &report)?, &url)?)?;
                        let Some(a) = answer.get("assignment").filter(|a| !a.is_null()) else {
                            return Ok(());
                        };
                        let job = a["job"].as_u64().context("assignment without a job")?;
                        let attempt = a["attempt"].as_u64().context("without an attempt")?;
                        given.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((job, attempt));
                        let finish = json!({
                            "builder": name, "attempt": attempt,
                            "outcome": { "result": "succeeded" },
                        });
                        let url = format!("{base}/jobs/{job}/finish");
                        check(post(agent, &url, &finish)?, &url)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a builder thread panicked"))??;
        }
        Ok(())
    })?;
    let dispatch_s = start.elapsed().as_secs_f64();
    let (cpu1, machine1) = (cpu(), machine_cpu_s());
    let mut given = given.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    given.sort_unstable();
    given.dedup();
    let url = format!("{}/jobs?state=succeeded", bases[0]);
    let done = read_json(check(agent.get(&url).call()?, &url)?)?;
    let done = done.as_array().map_or(0, Vec::len);
    if given.len() != args.jobs || done != args.jobs {
        bail!("{} jobs: {} distinct attempts given, {done} succeeded", args.jobs, given.len());
    }
    for d in &mut daemons {
        d.ensure_running()?;
        d.stop();
    }
    let jobs = args.jobs as f64;
    Ok(Run {
        accepted_per_s: jobs / accept_s,
        dispatched_per_s: jobs / dispatch_s,
        daemon_cpu_us_per_job: (cpu1 - cpu0) / jobs * 1e6,
        machine_cpu_us_per_job: (machine1 - machine0) / jobs * 1e6,
    })
}

type Response = ureq::http::Response<ureq::Body>;

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Result<Response> {
    let body = serde_json::to_vec(body)?;
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(&body[..])
        .with_context(|| format!("POST {url}"))
}

fn check(mut resp: Response, url: &str) -> Result<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    bail!("{url}: {} {body}", resp.status())
}

fn read_json(mut resp: Response) -> Result<Value> {
    let text = resp.body_mut().with_config().limit(256 << 20).read_to_string()?;
    Ok(serde_json::from_str(&text)?)
}

/// CPU time (user + system, all processes) the machine spent so far, seconds (`/proc/stat`,
/// 100 ticks per second).
fn machine_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system (idle iowait skipped) irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum();
    busy / 100.0
}
