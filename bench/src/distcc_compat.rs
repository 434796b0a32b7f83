//! `discomy-bench distcc`: whole Lua builds (`make -jN -C src linux`) through the distcc protocol,
//! side by side on loopback: the real distcc client against real `distccd` and against
//! compilerd's distcc listener, `discomy-cc` against compilerd (native protocol) and against
//! `distccd` (`distcc://…,lzo`). Medians and ratios, objects compared with a plain build; then
//! the LZO1X-1 encoder and decoder throughput on Lua's preprocessed units.

use crate::farm::Distccd;
use crate::proc::{Daemon, Job, find_discomy_bin, free_port};
use crate::project;
use crate::stats::{median, ratio};
use anyhow::{Context, Result, bail};
use discomy_protocol::distcc::lzo;
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// make -jN (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Builds per mode.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Slots of each server (distccd --jobs, compilerd --slots, DISTCC_HOSTS /N).
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// Directory holding lua5.4_*.orig.tar.gz.
    #[arg(long)]
    pub project_dir: Option<std::path::PathBuf>,
    /// Seconds of LZO work per direction for the throughput figures.
    #[arg(long, default_value_t = 2.0)]
    pub lzo_secs: f64,
    /// Only measure LZO throughput (no builds).
    #[arg(long)]
    pub lzo_only: bool,
}

const MODES: [&str; 5] =
    ["plain", "distcc>distccd", "distcc>compilerd", "discomy-cc>compilerd", "discomy-cc>distccd"];
const READY: Duration = Duration::from_secs(30);

pub fn run(args: &Args) -> Result<i32> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let jobs =
        args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let tarball = project::find_lua_tarball(&project::projects_dir(args.project_dir.as_deref()))?;
    let compilerd = find_discomy_bin("discomy-compilerd")?;
    let wrapper = compilerd.with_file_name("discomy-cc");
    let work = crate::proc::temp_dir("discomy-bench-distcc.")?;
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).context("creating scratch")?;
    let slots = args.slots.to_string();
    if args.lzo_only {
        lzo_throughput(&tarball, work.path(), &scratch, args.lzo_secs)?;
        return Ok(0);
    }

    let distccd = Distccd::start(args.slots)?;
    let dport = free_port()?;
    let addr_file = work.path().join("worker.addr");
    let worker_job = Job::new(&compilerd, work.path())
        .args(["worker", "--listen", "127.0.0.1:0", "--slots", &slots, "--distcc-listen"])
        .arg(format!("127.0.0.1:{dport}"))
        .arg("--addr-file")
        .arg(&addr_file);
    let worker_log = work.path().join("worker.log");
    let mut worker = Daemon::spawn("compilerd worker", &worker_job, &worker_log)?;
    let addr = worker.wait_for("address file", READY, || {
        let s = std::fs::read_to_string(&addr_file).ok()?;
        s.ends_with('\n').then(|| s.trim().to_owned())
    })?;
    worker.wait_for("distcc port", READY, || TcpStream::connect(("127.0.0.1", dport)).ok())?;
    let agent = |name: &str, hosts: String| -> Result<(Daemon, std::path::PathBuf)> {
        let socket = work.path().join(format!("{name}.sock"));
        let job = Job::new(&compilerd, work.path())
            .arg("agent")
            .arg("--socket")
            .arg(&socket)
            .args(["--hosts", &hosts])
            .arg("--store")
            .arg(work.path().join(format!("{name}.store")));
        let mut d = Daemon::spawn(name, &job, &work.path().join(format!("{name}.log")))?;
        d.wait_for("agent socket", READY, || UnixStream::connect(&socket).ok())?;
        Ok((d, socket))
    };
    let (_native_agent, native_sock) = agent("agent-native", format!("{addr}/{slots}"))?;
    let (_distcc_agent, distcc_sock) =
        agent("agent-distcc", format!("distcc://127.0.0.1:{}/{slots},lzo", distccd.port))?;
    let client_dir = work.path().join("distcc-client");
    std::fs::create_dir(&client_dir).context("creating DISTCC_DIR")?;

    println!(
        "discomy-bench distcc: Lua, make -j{jobs} -C src linux, {} rep(s) per mode, {} slots per server, loopback",
        args.reps, args.slots
    );
    println!("load average before: {}", crate::stats::load_average());
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut reference = None;
    let mut mismatches = 0usize;
    for rep in 0..args.reps {
        for k in 0..MODES.len() {
            let mode = MODES[(k + rep) % MODES.len()];
            let dir = work.path().join(format!("b{rep}-{k}"));
            std::fs::create_dir(&dir).context("creating build dir")?;
            let root = project::extract(&tarball, &dir, &scratch)?;
            let make =
                Job::new("make", &root).arg(format!("-j{jobs}")).args(["-C", "src", "linux"]);
            let cc_wrapper = format!("CC={} gcc -std=gnu99", wrapper.display());
            let job = match mode {
                "plain" => make,
                "distcc>distccd" => {
                    make.arg("CC=distcc gcc -std=gnu99").envs(&distccd.client_env())
                }
                "distcc>compilerd" => make
                    .arg("CC=distcc gcc -std=gnu99")
                    .env("DISTCC_HOSTS", format!("127.0.0.1:{dport}/{slots}"))
                    .env("DISTCC_DIR", &client_dir),
                "discomy-cc>compilerd" => make.arg(&cc_wrapper).env("DISCOMY_SOCKET", &native_sock),
                _ => make.arg(&cc_wrapper).env("DISCOMY_SOCKET", &distcc_sock),
            };
            let fin = job.timeout(Duration::from_secs(1800)).run_ok(&scratch)?;
            let objs = objects(&root.join("src"))?;
            match &reference {
                None if mode == "plain" => reference = Some(objs),
                Some(r) if *r != objs => {
                    mismatches += 1;
                    println!("  objects of {mode} (rep {}) differ from the plain build", rep + 1);
                }
                _ => {}
            }
            eprintln!("  {mode:<22} rep {}: {:.2} s", rep + 1, fin.ms() / 1000.0);
            times.entry(mode).or_default().push(fin.ms());
            std::fs::remove_dir_all(&dir).context("removing build dir")?;
        }
    }
    let med = |m: &str| median(times.get(m).map(Vec::as_slice).unwrap_or(&[]));
    println!("{:<22} {:>28} {:>9} {:>9}", "mode", "builds (s)", "median s", "vs plain");
    for m in MODES {
        let runs: Vec<String> =
            times.get(m).into_iter().flatten().map(|t| format!("{:.2}", t / 1000.0)).collect();
        println!(
            "{m:<22} {:>28} {:>9.2} {:>9}",
            runs.join(" "),
            med(m).unwrap_or(f64::NAN) / 1000.0,
            ratio(med(m), med("plain")).map_or("-".into(), |r| format!("{r:.3}"))
        );
    }
    let show = |label: &str, a: &str, b: &str| {
        if let Some(r) = ratio(med(a), med(b)) {
            println!("{label}: {r:.3}");
        }
    };
    show("distcc client: compilerd / distccd", "distcc>compilerd", "distcc>distccd");
    show("discomy-cc>compilerd / distcc>distccd", "discomy-cc>compilerd", "distcc>distccd");
    show("discomy-cc>distccd / distcc>distccd", "discomy-cc>distccd", "distcc>distccd");
    let worker_ok =
        std::fs::read_to_string(&worker_log).unwrap_or_default().matches("COMPILE_OK").count();
    println!(
        "remote compiles: distccd {} (COMPILE_OK), compilerd distcc listener {worker_ok}",
        distccd.compile_ok_count()?
    );
    println!("object mismatches: {mismatches}");
    lzo_throughput(&tarball, work.path(), &scratch, args.lzo_secs)?;
    Ok(if mismatches > 0 { 1 } else { 0 })
}

/// User plus system CPU time of this process, in seconds.
fn cpu_secs() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

fn objects(src: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut map = BTreeMap::new();
    for e in std::fs::read_dir(src).context("listing objects")? {
        let e = e.context("listing objects")?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".o") {
            map.insert(name, std::fs::read(e.path()).context("reading an object")?);
        }
    }
    Ok(map)
}

/// LZO1X-1 throughput on Lua's units preprocessed as distcc sends them (`gcc -E`).
fn lzo_throughput(tarball: &Path, work: &Path, scratch: &Path, secs: f64) -> Result<()> {
    let dir = work.join("lzo");
    std::fs::create_dir(&dir).context("creating lzo dir")?;
    let root = project::extract(tarball, &dir, scratch)?;
    let src = root.join("src");
    let mut units = Vec::new();
    for unit in project::list_units(&src)? {
        let fin = Job::new("gcc", &src)
            .args(["-std=gnu99", "-O2", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX", "-E"])
            .arg(&unit.name)
            .run_ok(scratch)?;
        units.push(fin.stdout.into_bytes());
    }
    let total: usize = units.iter().map(Vec::len).sum();
    let packed: Vec<Vec<u8>> = units.iter().map(|u| lzo::compress(u)).collect();
    let packed_total: usize = packed.iter().map(Vec::len).sum();
    for (u, p) in units.iter().zip(&packed) {
        if lzo::decompress(p, u.len()).ok().as_ref() != Some(u) {
            bail!("LZO round trip failed");
        }
    }
    // MB per second of wall time, and per second of this process's CPU time (the machine may be
    // shared; CPU time is what the codec costs).
    let rate = |f: &dyn Fn()| {
        let (start, cpu0) = (Instant::now(), cpu_secs());
        let mut rounds = 0u32;
        while start.elapsed().as_secs_f64() < secs || rounds == 0 {
            f();
            rounds += 1;
        }
        let bytes = total as f64 * f64::from(rounds) / 1e6;
        (bytes / start.elapsed().as_secs_f64(), bytes / (cpu_secs() - cpu0).max(1e-9))
    };
    let enc = rate(&|| {
        for u in &units {
            std::hint::black_box(lzo::compress(u));
        }
    });
    let dec = rate(&|| {
        for (u, p) in units.iter().zip(&packed) {
            std::hint::black_box(lzo::decompress(p, u.len()).ok());
        }
    });
    println!(
        "LZO1X-1 on {} preprocessed Lua units ({:.1} MB, ratio {:.1} %): compress {:.0} MB/s ({:.0} per CPU second), decompress {:.0} MB/s ({:.0} per CPU second)",
        units.len(),
        total as f64 / 1e6,
        100.0 * packed_total as f64 / total as f64,
        enc.0,
        enc.1,
        dec.0,
        dec.1
    );
    Ok(())
}
