//! Admission before work on a worker, under attack from a local peer:
//!
//! - `idle_connections_do_not_lock_out_an_agent`: 300 silent connections (no handshake) and 100
//!   handshaken ones that never send a request sit on a worker. Before, they held all of its 256
//!   connection places (for the 10 s handshake limit, and for the 300 s idle limit), so the
//!   agent's connections were closed at once and every unit fell back to a local compile. Now
//!   idle connections are closed to make room, and the agent's unit is compiled remotely.
//! - `decompression_bombs_wait_for_room`: twelve clients send at once a unit whose 2 MiB of lz4
//!   decompress to 512 MiB (with a wrong digest, so none is compiled). Before, each was
//!   decompressed as it arrived, as many at once as the worker had threads; now each waits for
//!   room in the worker's payload budget (512 MiB here), so the worker's peak memory stays
//!   near one bomb, and the worker still compiles afterwards.
//! - `decompression_bombs_at_the_agent_wait_for_room`: the same against an agent's socket
//!   (source files that announce 512 MiB): before, the agent decompressed each as it arrived;
//!   now within its budget of one bomb.
//! - `a_work_directory_someone_prepared_is_refused`: `--work-dir` naming a symbolic link, or a
//!   directory of another user that anyone may write to. Before, the worker used either (as
//!   root it would write and chown through them) and removed the link's target at exit; now it
//!   refuses to start and says why.
//! - `a_disk_full_worker_is_backed_off`: a worker whose work directory is a full tmpfs refuses
//!   every unit at once ("internal"). Before, the agent passed that refusal on and each unit
//!   placed there was compiled locally (the worker looked the least busy); now the agent backs
//!   the worker off and the unit goes to a healthy one: every unit of the build is remote.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use discomy_protocol::frame::{read_frame, write_frame};
use discomy_protocol::handshake::client_handshake;
use discomy_protocol::{
    AuthConfig, CompileRequest, CompilerId, Digest, Language, OutputKind, Payload, Request,
    Response,
};
use discomy_tests::{
    Agent, Farm, Proc, Worker, assert_same_objects, bin, clean_command, hosts_of,
    lua_with_reference, make_lua_with_discomy_cc, objects, read_stats, run_to_success,
};

/// Peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib >> 10
}

#[test]
fn idle_connections_do_not_lock_out_an_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut farm = Farm::start(dir, 1, 2);
    let addr = farm.workers[0].addr;

    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).unwrap());
    }
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).unwrap();
        // Refused at once (too many busy connections) or evicted later: either way it is out.
        if client_handshake(&mut s, &AuthConfig::none()).is_ok() {
            idle.push(s);
        }
    }
    eprintln!("[e2e] {} idle connections held open", idle.len());

    let source = dir.join("unit.c");
    std::fs::write(&source, "int twice(int x) { return 2 * x; }\n").unwrap();
    let stats = dir.join("calls.stats");
    let out = clean_command(bin("discomy-cc"))
        .args(["gcc", "-O2", "-c"])
        .arg(&source)
        .arg("-o")
        .arg(dir.join("unit.o"))
        .env("DISCOMY_SOCKET", &farm.agent.socket)
        .env("DISCOMY_STATS_FILE", &stats)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = read_stats(&stats);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].outcome, "remote", "the unit did not reach the worker: {lines:?}");
    farm.assert_alive();

    // Most idle connections were closed to make room (the peer sees end of file).
    let mut closed = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut byte = [0u8; 1];
        if matches!(s.read(&mut byte), Ok(0)) {
            closed += 1;
        }
    }
    eprintln!("[e2e] {closed} of {} idle connections closed by the worker", idle.len());
    assert!(closed >= idle.len() - 256, "{closed} closed");
}

/// A Compile request whose unit announces 512 MiB: 2 MiB of lz4 that decompress to zeros,
/// under a digest that is not theirs (refused once decompressed, never compiled).
fn bomb(identity: Digest) -> Request {
    Request::Compile(CompileRequest {
        compiler: CompilerId { name: "gcc".into(), identity },
        language: Language::C,
        output: OutputKind::Object,
        args: vec!["-O2".into()],
        source_name: "bomb.c".into(),
        unit: bomb_payload(),
        source_date_epoch: None,
    })
}

/// 2 MiB of lz4 that decompress to 512 MiB of zeros, under a digest that is not theirs.
fn bomb_payload() -> Payload {
    let zeros = vec![0u8; discomy_protocol::payload::MAX_RAW_LEN];
    let mut payload = Payload::compress(&zeros);
    payload.digest = Digest::of(b"something else");
    payload
}

/// Sends a bomb from 12 clients at once through `call`, checks each was refused for its digest
/// (decompressed, then refused: never compiled or stored), and returns the daemon's peak memory
/// in MiB before and after.
fn bombard<F>(pid: u32, call: F) -> (u64, u64)
where
    F: Fn() -> Response + Clone + Send + 'static,
{
    let before = peak_rss_mib(pid);
    let clients: Vec<_> = (0..12).map(|_| std::thread::spawn(call.clone())).collect();
    for c in clients {
        match c.join().unwrap() {
            Response::Refused(r) => assert!(r.message.contains("digest"), "{r:?}"),
            other => panic!("a bomb was answered with {other:?}"),
        }
    }
    (before, peak_rss_mib(pid))
}

#[test]
fn decompression_bombs_wait_for_room() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = Worker::start(tmp.path(), "worker0", 2);
    let gcc =
        discomy_wrapper::invocation::find_on_path("gcc", &std::env::var_os("PATH").unwrap(), None)
            .unwrap();
    let toolchain =
        discomy_wrapper::toolchain::collect(&gcc, &[], &std::env::var_os("PATH").unwrap()).unwrap();
    let identity = toolchain.manifest.digest();
    let request = bomb(identity);
    let addr = worker.addr;
    let (before, peak) = bombard(worker.proc.pid(), move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        client_handshake(&mut s, &AuthConfig::none()).unwrap();
        write_frame(&mut s, &request).unwrap();
        read_frame::<_, Response>(&mut s).unwrap()
    });
    eprintln!("[e2e] worker peak memory: {before} MiB before, {peak} MiB after 12 bombs");
    // One bomb is 512 MiB decompressed; two at once would be over 1 GiB.
    assert!(peak < before + 800, "peak {peak} MiB (from {before} MiB)");

    let mut s = TcpStream::connect(worker.addr).unwrap();
    client_handshake(&mut s, &AuthConfig::none()).unwrap();
    write_frame(&mut s, &Request::Ping).unwrap();
    assert!(matches!(read_frame::<_, Response>(&mut s).unwrap(), Response::Pong));
}

#[test]
fn decompression_bombs_at_the_agent_wait_for_room() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path(), "agent", "");
    let bomb = bomb_payload();
    let socket = agent.socket.clone();
    let (before, peak) = bombard(agent.proc.pid(), move || {
        let mut client = discomy_wrapper::client::AgentClient::connect(&socket).unwrap();
        client.call(&Request::PutSource(bomb.clone())).unwrap()
    });
    eprintln!("[e2e] agent peak memory: {before} MiB before, {peak} MiB after 12 bombs");
    assert!(peak < before + 800, "peak {peak} MiB (from {before} MiB)");
}

/// Starts a worker with `--work-dir dir` and returns how it ended within 20 s (`None`: still
/// running, then killed) and its stderr.
fn worker_on(
    scratch: &std::path::Path,
    name: &str,
    dir: &std::path::Path,
) -> (Option<i32>, String) {
    let mut cmd = clean_command(bin("discomy-compilerd"));
    cmd.args(["worker", "--listen", "127.0.0.1:0", "--slots", "1", "--seed-compilers", "gcc"])
        .arg("--work-dir")
        .arg(dir)
        .arg("--store")
        .arg(scratch.join(format!("{name}.store")));
    let mut proc = Proc::spawn(name, &mut cmd, scratch);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(status) = proc.try_wait() {
            return (status.code(), proc.stderr_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    proc.kill();
    (None, proc.stderr_text())
}

#[test]
fn a_work_directory_someone_prepared_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let target = dir.join("someone-elses");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("precious"), b"keep me").unwrap();
    let link = dir.join("work-link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (code, stderr) = worker_on(dir, "via-link", &link);
    assert!(code.is_some_and(|c| c != 0), "the worker ran on a link ({code:?}): {stderr}");
    assert!(stderr.contains("symbolic link"), "unclear refusal: {stderr}");
    assert!(target.join("precious").exists(), "the link's target lost its files");

    let open = dir.join("open-to-all");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, stderr) = worker_on(dir, "open", &open);
    assert!(
        code.is_some_and(|c| c != 0),
        "the worker ran in a 0777 directory ({code:?}): {stderr}"
    );
    assert!(stderr.contains("others may write"), "unclear refusal: {stderr}");
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let opts = format!("size={size},mode=0700");
        let st =
            clean_command("mount").args(["-t", "tmpfs", "-o", &opts, "tmpfs"]).arg(at).status();
        assert!(st.unwrap().success(), "mount a tmpfs at {} (the tests run as root)", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = clean_command("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_disk_full_worker_is_backed_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (tree, src, reference) = lua_with_reference(dir);
    // The sick worker's work directory (its `--work-dir`, see Worker::start_with), full.
    let full = Tmpfs::mount(&dir.join("sick.work"), "64k");
    let _ = std::fs::write(full.0.join("filler"), vec![0u8; 1 << 20]);
    let workers = [Worker::start(dir, "sick", 2), Worker::start(dir, "healthy", 2)];
    let agent = Agent::start(dir, "agent", &hosts_of(&workers));

    let stats = dir.join("calls.stats");
    let mut cmd = make_lua_with_discomy_cc(&tree, &agent.socket, &dir.join("cache"));
    cmd.env("DISCOMY_STATS_FILE", &stats);
    run_to_success("make-beside-a-full-disk", &mut cmd, dir);
    assert_same_objects(&reference, &objects(&src), "a build beside a disk-full worker");
    let lines: Vec<_> = read_stats(&stats).into_iter().filter(|l| l.is_compile()).collect();
    let local: Vec<_> = lines.iter().filter(|l| l.outcome != "remote").collect();
    assert!(local.is_empty(), "units not compiled remotely: {local:?}");
    let out = clean_command(bin("discomy"))
        .args(["stats", "--json", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["backoffs"].as_u64().unwrap() >= 1, "the full worker was not backed off: {json}");
    drop(agent);
    drop(workers);
    drop(full);
}
