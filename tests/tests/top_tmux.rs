//! The operator's live views, driven in a real terminal: tmux on a private socket, keys sent with
//! `send-keys`, the screen read with `capture-pane`.
//!
//! - `top_shows_the_farm_filters_sorts_and_quits`: `discomy top` against a coordinator with two
//!   workers (3 and 1 slots) and its build-queue API: both workers and their slots appear, and a
//!   job submitted to the queue; `/` + text + Enter leaves only the matching node; `s` sorts by
//!   slots (most first) and `r` reverses; `q` leaves, the terminal restored and the shell running
//!   the command goes on. A second run with an API nobody serves says the queue is unreachable.
//! - `run_shows_a_progress_line_on_a_terminal`: `discomy run --local-farm 1` of a few slow
//!   compiles shows its progress line while the build runs, then the usual summary.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use discomy_tests::queue::free_port;
use discomy_tests::{Worker, bin, clean_command, start_coordinator, wait_nodes};

/// A tmux server on a private socket with one 160x45 session; killed (with everything in it)
/// when dropped, also when the test fails.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `shell_command` (run by `sh -c`) in a new detached session.
    fn start(name: &str, shell_command: &str) -> Tmux {
        let tmux = Tmux { socket: format!("discomy-{name}-{}", std::process::id()) };
        let out = tmux
            .command()
            .args(["new-session", "-d", "-x", "160", "-y", "45", "-s", "main"])
            .arg(shell_command)
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        tmux
    }

    fn command(&self) -> Command {
        let mut cmd = clean_command("tmux");
        // No user configuration; UTF-8 for the bars; a terminal type tmux knows.
        cmd.args(["-L", &self.socket, "-f", "/dev/null"])
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm-256color");
        cmd
    }

    /// The visible screen.
    fn capture(&self) -> String {
        let out = self.command().args(["capture-pane", "-p", "-t", "main"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// Sends keys (tmux key names: `Enter`, `Escape`, or literal text).
    fn send(&self, keys: &[&str]) {
        let status = self.command().args(["send-keys", "-t", "main"]).args(keys).status();
        assert!(status.is_ok_and(|s| s.success()), "tmux send-keys {keys:?}");
    }

    /// Polls the screen until `ok` holds; fails the test with the last screen after `within`.
    fn wait_for(&self, what: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if ok(&screen) {
                return screen;
            }
            assert!(start.elapsed() < within, "{what} within {within:?}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

/// `'text'` for sh.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The screen's lines that show one of `addresses`, in screen order, as those addresses.
fn node_order<'a>(screen: &str, addresses: &[&'a str]) -> Vec<&'a str> {
    screen
        .lines()
        .filter_map(|line| addresses.iter().find(|a| line.contains(*a)).copied())
        .collect()
}

/// The line of `screen` showing `address`, split into words.
fn node_row(screen: &str, address: &str) -> Vec<String> {
    let line = screen.lines().find(|l| l.contains(address)).unwrap_or_default();
    line.split(|c: char| c.is_whitespace() || c == '│')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Submits a source RPM (its content does not matter: no builder claims it) to the API at `api`;
/// returns the job's id.
fn submit_job(dir: &Path, api: &str) -> String {
    let srpm = dir.join("hello-1.0-1.src.rpm");
    std::fs::write(&srpm, b"not really an rpm").unwrap();
    let out = clean_command(bin("discomy"))
        .args(["submit", "--api", api, "--chroot", "rocky-9", "--submitter", "tester"])
        .arg(&srpm)
        .output()
        .unwrap();
    assert!(out.status.success(), "discomy submit: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn top_shows_the_farm_filters_sorts_and_quits() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let api = format!("http://127.0.0.1:{}", free_port());
    let api_listen = api.trim_start_matches("http://").to_owned();
    let state = dir.join("state");
    let state = state.to_str().unwrap();
    let (_coord, addr) = start_coordinator(
        dir,
        "coordinator",
        "127.0.0.1:0",
        &["--api-listen", &api_listen, "--state-dir", state],
    );
    let caddr = addr.to_string();
    let big = Worker::start_with(dir, "worker-big", 3, &["--coordinator", &caddr]);
    let small = Worker::start_with(dir, "worker-small", 1, &["--coordinator", &caddr]);
    wait_nodes(addr, 2, Duration::from_secs(20));
    let job = submit_job(dir, &api);
    let (big_addr, small_addr) = (big.addr.to_string(), small.addr.to_string());
    let both = [big_addr.as_str(), small_addr.as_str()];

    let top = format!(
        "{} top --coordinator {caddr} --api {api} --refresh 0.3; echo top-exited=$?; exec sleep 600",
        quote(bin("discomy").to_str().unwrap())
    );
    let tmux = Tmux::start("top", &top);
    let screen = tmux.wait_for("both nodes shown", Duration::from_secs(20), |s| {
        both.iter().all(|a| s.contains(a)) && s.contains("hello")
    });
    eprintln!("[e2e] discomy top:\n{screen}");
    assert!(screen.contains("2 nodes, 0/4 slots in use"), "{screen}");
    // Slots are the fourth column (id, host, address, slots).
    assert_eq!(node_row(&screen, &big_addr).get(3).map(String::as_str), Some("3"), "{screen}");
    assert_eq!(node_row(&screen, &small_addr).get(3).map(String::as_str), Some("1"), "{screen}");
    assert!(screen.contains("sort: address (natural)"), "{screen}");
    let mut by_address = both.to_vec();
    by_address.sort_by_key(|a| a.parse::<std::net::SocketAddr>().unwrap());
    assert_eq!(node_order(&screen, &both), by_address, "{screen}");
    assert!(screen.contains("0 running, 0 scheduled, 1 waiting"), "{screen}");
    let job_line = screen.lines().find(|l| l.contains("hello")).unwrap_or_default();
    assert!(job_line.contains(&job) && job_line.contains("waiting"), "{screen}");
    assert!(job_line.contains("tester") && job_line.contains("rocky-9"), "{screen}");
    assert!(screen.contains("q  quit") && screen.contains("/  filter"), "{screen}");

    // A filter on the small worker's port: only its row is left.
    let port = format!(":{}", small.addr.port());
    tmux.send(&["/"]);
    tmux.send(&["-l", &port]);
    tmux.wait_for("the filter being typed", Duration::from_secs(5), |s| {
        s.contains(&format!("filter:  {port}_"))
    });
    tmux.send(&["Enter"]);
    let screen = tmux.wait_for("only the small worker", Duration::from_secs(5), |s| {
        s.contains(&format!("filter: {port}")) && !s.contains(&big_addr)
    });
    assert!(screen.contains(&small_addr) && screen.contains("nodes 1/2"), "{screen}");
    // Esc clears it.
    tmux.send(&["Escape"]);
    tmux.wait_for("both nodes again", Duration::from_secs(5), |s| {
        both.iter().all(|a| s.contains(a))
    });

    // `s`: by slots, most first; `r`: fewest first.
    tmux.send(&["s"]);
    let screen = tmux.wait_for("sorted by slots", Duration::from_secs(5), |s| {
        s.contains("sort: slots (natural)") && both.iter().all(|a| s.contains(a))
    });
    assert_eq!(node_order(&screen, &both), [&big_addr, &small_addr], "{screen}");
    tmux.send(&["r"]);
    let screen = tmux.wait_for("sorted by slots, reversed", Duration::from_secs(5), |s| {
        s.contains("sort: slots (reversed)") && both.iter().all(|a| s.contains(a))
    });
    assert_eq!(node_order(&screen, &both), [&small_addr, &big_addr], "{screen}");

    // `q`: the command ends with status 0 and the shell's screen is back (no alternate screen).
    tmux.send(&["q"]);
    let screen =
        tmux.wait_for("top to exit", Duration::from_secs(10), |s| s.contains("top-exited="));
    assert!(screen.contains("top-exited=0"), "{screen}");
    assert!(!screen.contains("sort: slots"), "the alternate screen was left: {screen}");
    let alternate =
        tmux.command().args(["display", "-p", "-t", "main", "#{alternate_on}"]).output();
    let alternate = alternate.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert_eq!(alternate.as_deref().unwrap_or("?"), "0", "still on the alternate screen");
    drop(tmux);

    // An API nobody serves: the queue pane is a line saying so; the nodes still show.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let top = format!(
        "{} top --coordinator {caddr} --api {nobody} --refresh 0.3; echo top-exited=$?; exec sleep 600",
        quote(bin("discomy").to_str().unwrap())
    );
    let tmux = Tmux::start("top-noapi", &top);
    let screen = tmux.wait_for("the unreachable API", Duration::from_secs(20), |s| {
        s.contains(&format!("build queue: API {nobody} not reachable")) && s.contains(&big_addr)
    });
    eprintln!("[e2e] without the API:\n{screen}");
    tmux.send(&["q"]);
    tmux.wait_for("top to exit", Duration::from_secs(10), |s| s.contains("top-exited=0"));
    eprintln!("[e2e] top test took {:?}", started.elapsed());
}

#[test]
fn run_shows_a_progress_line_on_a_terminal() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    for i in 1..=4 {
        std::fs::write(
            dir.join(format!("u{i}.c")),
            format!("int unit{i}(int x) {{ return x * {i}; }}\n"),
        )
        .unwrap();
    }
    let build = "for i in 1 2 3 4; do $CC -O2 -c u$i.c -o u$i.o || exit 1; sleep 1.5; done";
    let run = format!(
        "cd {} && DISCOMY_CACHE=0 {} run --local-farm 1 -- sh -c {}; echo run-exited=$?; exec sleep 600",
        quote(dir.to_str().unwrap()),
        quote(bin("discomy").to_str().unwrap()),
        quote(build)
    );
    let tmux = Tmux::start("run", &run);
    // Mid-build: the line counts finished units and shows the last one.
    let screen = tmux.wait_for("the progress line with two units", Duration::from_secs(60), |s| {
        s.contains("| units done 2: ") && s.contains("| last: u2.c")
    });
    eprintln!("[e2e] mid-build:\n{screen}");
    let line = screen.lines().find(|l| l.contains("| units done 2: ")).unwrap_or_default();
    assert!(line.contains("failed 0"), "{screen}");
    let screen =
        tmux.wait_for("the run to end", Duration::from_secs(60), |s| s.contains("run-exited="));
    eprintln!("[e2e] after the build:\n{screen}");
    assert!(screen.contains("run-exited=0"), "{screen}");
    let summary = screen.lines().find(|l| l.contains("build finished")).unwrap_or_default();
    assert!(summary.contains("units=4") && summary.contains("failed=0"), "{screen}");
    assert!(!screen.contains("units done"), "the progress line was not cleared: {screen}");
    for i in 1..=4 {
        assert!(dir.join(format!("u{i}.o")).is_file(), "u{i}.o not built");
    }
    eprintln!("[e2e] run test took {:?}", started.elapsed());
}
