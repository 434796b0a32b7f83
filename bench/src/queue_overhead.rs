//! `discomy-bench queue-overhead`: what the build queue costs per package, against running the
//! same rpmbuilds by hand in a shell loop. Both sides build the same specs, one at a time, in the
//! same chroot with the same isolation (`rpm/chroot-run.sh --user`, as the builder runs it);
//! the queue side is `discomy submit --batch` to a real coordinator and one real builder with its
//! default settings (slots 1, reports every 5 s, woken early when a build ends), timed from the
//! submission to the last job's end as `discomy jobs list` sees it. Reports medians, the ratio
//! and the overhead per job.
//!
//! Packages: `--tiny N` generated specs whose build does nothing (the overhead alone), and the
//! test projects' real Lua spec (`--lua`), from `scripts/setup-chroot.sh`'s chroot and sources.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{Daemon, Job, find_discomy_bin, free_port, temp_dir};
use crate::stats::median;

/// Options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Generated packages with an empty build (the queue's own overhead).
    #[arg(long, default_value_t = 6)]
    pub tiny: usize,
    /// Also build the real Lua spec (tests/rpm-projects/lua) this many times per repetition.
    #[arg(long, default_value_t = 1)]
    pub lua: usize,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// The chroot tree [default: <workspace>/target/chroots/trixie/root].
    #[arg(long)]
    pub root: Option<PathBuf>,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const TINY_SPEC: &str = "Name: tiny-NN\nVersion: 1.0\nRelease: 1\nSummary: nothing\nLicense: MIT\n\
BuildArch: noarch\n%description\nAn empty package: the queue's overhead alone.\n%build\ntrue\n\
%install\nmkdir -p %{buildroot}/usr/share/tiny-NN\necho NN >%{buildroot}/usr/share/tiny-NN/id\n\
%files\n/usr/share/tiny-NN/id\n";

/// One package: its directory (spec + sources), its spec's file name.
struct Package {
    dir: PathBuf,
    spec: String,
}

fn packages(scratch: &Path, args: &Args) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for i in 0..args.tiny {
        let name = format!("tiny-{i:02}");
        let dir = scratch.join("packages").join(&name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("{name}.spec")), TINY_SPEC.replace("NN", &format!("{i:02}")))?;
        out.push(Package { dir, spec: format!("{name}.spec") });
    }
    let sources = workspace().join("target/chroots/sources");
    for i in 0..args.lua {
        // Each its own name, so a batch does not hold one name twice.
        let name = format!("lua{i}");
        let dir = scratch.join("packages").join(&name);
        fs::create_dir_all(&dir)?;
        let spec = fs::read_to_string(workspace().join("tests/rpm-projects/lua/lua.spec"))?;
        fs::write(dir.join(format!("{name}.spec")), spec)?;
        let tarball = sources.join("lua-5.4.4.tar.gz");
        fs::copy(&tarball, dir.join("lua-5.4.4.tar.gz"))
            .with_context(|| format!("{}: run scripts/setup-chroot.sh", tarball.display()))?;
        out.push(Package { dir, spec: format!("{name}.spec") });
    }
    Ok(out)
}

/// Rocky 9's macro files, as builders install them (`--install HOST=CHROOT`).
fn el9_installs() -> Vec<(PathBuf, &'static str)> {
    let rpm = workspace().join("rpm");
    vec![
        (rpm.join("el9/macros.el9"), "/etc/rpm/macros.el9"),
        (rpm.join("el9/rpmrc"), "/etc/rpmrc"),
        (rpm.join("el9/redhat-hardened-cc1"), "/usr/lib/rpm/redhat/redhat-hardened-cc1"),
        (rpm.join("el9/redhat-hardened-ld"), "/usr/lib/rpm/redhat/redhat-hardened-ld"),
    ]
}

/// The shell loop: each package through `chroot-run.sh --user`, one after the other.
fn shell_loop(scratch: &Path, root: &Path, pkgs: &[Package]) -> Result<Duration> {
    let start = Instant::now();
    for (i, p) in pkgs.iter().enumerate() {
        let work = scratch.join(format!("shell-{i}"));
        let mut job = Job::new("sh", scratch)
            .arg(workspace().join("rpm/chroot-run.sh"))
            .arg("--root")
            .arg(root)
            .arg("--work")
            .arg(&work)
            .arg("--user")
            .args(["--macro", "_topdir=/builddir/build"]);
        for (host, inside) in el9_installs() {
            job = job.arg("--install").arg(format!("{}={inside}", host.display()));
        }
        for entry in fs::read_dir(&p.dir)? {
            let path = entry?.path();
            let name =
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let inside = if name.ends_with(".spec") { "SPECS" } else { "SOURCES" };
            job = job
                .arg("--install")
                .arg(format!("{}=/builddir/build/{inside}/{name}", path.display()));
        }
        let job =
            job.arg("--").arg(format!("rpmbuild -ba --nodeps /builddir/build/SPECS/{}", p.spec));
        job.run_ok(scratch).with_context(|| format!("shell loop: {}", p.spec))?;
        let _ = fs::remove_dir_all(&work);
    }
    Ok(start.elapsed())
}

/// The queue: a coordinator and one builder, `discomy submit --batch`, until every job ended.
fn queue(scratch: &Path, root: &Path, pkgs: &[Package], rep: usize) -> Result<Duration> {
    let dir = scratch.join(format!("queue-{rep}"));
    fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let api = format!("http://127.0.0.1:{port}");
    let coordinator = Job::new(find_discomy_bin("discomy-coordinator")?, &dir)
        .args(["--listen", "127.0.0.1:0", "--no-mdns", "--api-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--api-addr-file")
        .arg(dir.join("api.addr"));
    let mut coordinator = Daemon::spawn("coordinator", &coordinator, &dir.join("coordinator.log"))?;
    let addr_file = dir.join("api.addr");
    coordinator
        .wait_for("the API", Duration::from_secs(30), || addr_file.exists().then_some(()))?;
    let mut config = format!(
        "name = \"bench\"\napi = \"{api}\"\nwork_dir = \"{}\"\nrunner = \"{}\"\n\
         [[chroot]]\nname = \"el9\"\nroot = \"{}\"\nnodeps = true\n[chroot.install]\n",
        dir.join("builder-work").display(),
        workspace().join("rpm/chroot-run.sh").display(),
        root.display()
    );
    for (host, inside) in el9_installs() {
        config.push_str(&format!("\"{inside}\" = \"{}\"\n", host.display()));
    }
    fs::write(dir.join("builder.toml"), config)?;
    let builder = Job::new(find_discomy_bin("discomy-compilerd")?, &dir)
        .arg("builder")
        .arg("--config")
        .arg(dir.join("builder.toml"));
    let _builder = Daemon::spawn("builder", &builder, &dir.join("builder.log"))?;
    let discomy = find_discomy_bin("discomy")?;
    let start = Instant::now();
    let mut submit = Job::new(&discomy, &dir)
        .args(["submit", "--api", &api, "--chroot", "el9", "--arch", "x86_64", "--batch", "bench"]);
    for p in pkgs {
        submit = submit.arg("--package").arg(&p.dir);
    }
    submit.run_ok(&dir).context("discomy submit")?;
    let list = Job::new(&discomy, &dir).args(["jobs", "list", "--json", "--api", &api]);
    loop {
        let out = list.run_ok(&dir)?;
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)?;
        let ended = |s: &str| matches!(s, "succeeded" | "failed" | "cancelled");
        if jobs.len() == pkgs.len() && jobs.iter().all(|j| ended(j["state"].as_str().unwrap_or("")))
        {
            if let Some(bad) = jobs.iter().find(|j| j["state"] != "succeeded") {
                bail!("a job did not succeed: {bad}\n{}", coordinator.report(20));
            }
            break;
        }
        coordinator.ensure_running()?;
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("the queue did not finish within 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(start.elapsed())
}

/// Runs the benchmark and prints the report.
#[allow(clippy::print_stdout)]
pub fn run(args: &Args) -> Result<()> {
    let root = args.root.clone().unwrap_or_else(|| workspace().join("target/chroots/trixie/root"));
    if !root.join("usr/bin/rpmbuild").is_file() {
        bail!("no chroot with rpmbuild at {}: run scripts/setup-chroot.sh", root.display());
    }
    let scratch = temp_dir("discomy-queue-bench")?;
    let pkgs = packages(scratch.path(), args)?;
    let (mut shell, mut queued) = (Vec::new(), Vec::new());
    for rep in 0..args.reps {
        // Alternate which side goes first, so drift on a noisy machine hits both.
        let (s, q) = if rep % 2 == 0 {
            let s = shell_loop(scratch.path(), &root, &pkgs)?;
            (s, queue(scratch.path(), &root, &pkgs, rep)?)
        } else {
            let q = queue(scratch.path(), &root, &pkgs, rep)?;
            (shell_loop(scratch.path(), &root, &pkgs)?, q)
        };
        eprintln!("rep {rep}: shell loop {:.2} s, queue {:.2} s", s.as_secs_f64(), q.as_secs_f64());
        shell.push(s.as_secs_f64());
        queued.push(q.as_secs_f64());
    }
    let (s, q) = (median(&shell).unwrap_or(0.0), median(&queued).unwrap_or(0.0));
    let n = pkgs.len() as f64;
    println!(
        "packages: {} tiny + {} lua, built one at a time, {} reps",
        args.tiny, args.lua, args.reps
    );
    println!(
        "shell loop of rpmbuilds (chroot-run.sh --user)   median {s:.2} s  ({:.2} s/package)",
        s / n
    );
    println!(
        "discomy submit --batch → coordinator → builder   median {q:.2} s  ({:.2} s/package)",
        q / n
    );
    println!("ratio queue / shell loop: {:.2}; overhead per job: {:.2} s", q / s, (q - s) / n);
    Ok(())
}
