//! Toolchains shipped by content on a live farm: a private gcc 11 that no worker has (unpacked
//! from Debian packages by `scripts/fetch-gcc11.sh`), the system gcc with a Red Hat style specs
//! file and a real gcc plugin, and two agents shipping the same compiler to one worker at once.
//!
//! Each compile's object is byte-identical to the local compiler's, every compile ran remotely
//! (stats `remote`), and the worker installed each toolchain exactly once: later units and the
//! second agent reuse it, and no blob crosses the wire twice.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use discomy_tests::{
    Agent, Farm, Proc, ShowOnFailure, StatLine, Worker, agent_stats, bin, capture, clean_command,
    diff_captures, extract_lua, private_tmp, read_stats, worker_stats,
};
use discomy_wrapper::invocation::find_on_path;
use discomy_wrapper::toolchain::{collect, extras_for_args};

/// Lua's own flags for the `linux` target.
const BASE: &[&str] =
    &["-std=gnu99", "-O2", "-Wall", "-Wextra", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX"];
/// The units compiled through the farm.
const SOURCES: &[&str] = &["lapi.c", "lvm.c", "lstring.c", "ltable.c"];
/// Red Hat's `redhat-hardened-cc1`: PIE unless the command says otherwise.
const EL_SPECS: &str =
    "*cc1_options:\n+ %{!r:%{!fpie:%{!fPIE:%{!fpic:%{!fPIC:%{!fno-pic:-fPIE}}}}}}\n";
/// A real gcc plugin built against gcc-12-plugin-dev: it checks gcc's version and, at the end of
/// each unit, emits a `.discomy_plugin` section, so the object proves the plugin ran.
const PLUGIN_SOURCE: &str = r#"
#include "gcc-plugin.h"
#include "plugin-version.h"
#include "tree.h"
#include "output.h"
int plugin_is_GPL_compatible;
static void finish_unit(void *, void *) {
  fprintf(asm_out_file, "\t.section .discomy_plugin,\"\",@progbits\n\t.string \"discomy-plugin-ran\"\n");
}
int plugin_init(struct plugin_name_args *info, struct plugin_gcc_version *version) {
  if (!plugin_default_version_check(version, &gcc_version)) return 1;
  register_callback(info->base_name, PLUGIN_FINISH_UNIT, finish_unit, NULL);
  return 0;
}
"#;
/// How long one wrapper call may take (the first one uploads a whole compiler).
const WRAPPER_TIMEOUT: Duration = Duration::from_secs(180);

fn path_var() -> OsString {
    std::env::var_os("PATH").unwrap_or_default()
}

/// `PREFIX/usr/bin/gcc-11`, with PREFIX = `<target>/tmp/gcc11` (shared with the wrapper's tests),
/// fetched by `scripts/fetch-gcc11.sh` when missing.
fn gcc11() -> PathBuf {
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gcc11");
    let script = discomy_tests::workspace_root().join("scripts").join("fetch-gcc11.sh");
    let out = clean_command("bash").arg(&script).arg(&prefix).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/fetch-gcc11.sh {} failed (it needs Debian's apt and network access to \
         deb.debian.org):\n{}",
        prefix.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = prefix.canonicalize().unwrap();
    assert!(
        !std::env::split_paths(&path_var())
            .any(|d| d.is_absolute() && d.canonicalize().is_ok_and(|d| d.starts_with(&prefix))),
        "the gcc 11 prefix must not be on PATH (the workers would seed it)"
    );
    prefix.join("usr").join("bin").join("gcc-11")
}

/// The system gcc, as the wrapper finds it.
fn system_gcc() -> PathBuf {
    find_on_path("gcc", &path_var(), None).expect("gcc on PATH")
}

/// Lua's flags, `extra`, `-c SOURCE`, and `out` (e.g. `-o x.o`), as owned strings.
fn lua_args(extra: &[String], source: &str, out: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = BASE.iter().map(|a| (*a).to_owned()).collect();
    args.extend(extra.iter().cloned());
    args.extend(["-c".to_owned(), source.to_owned()]);
    args.extend(out.iter().map(|a| (*a).to_owned()));
    args
}

/// Where a wrapper sends its units and reports them.
struct WrapperEnv<'a> {
    socket: &'a Path,
    stats: &'a Path,
    tmp: &'a Path,
}

/// `discomy-cc COMPILER ARGS…` for a wrapper environment.
fn wrapper_command(compiler: &Path, args: &[String], env: &WrapperEnv<'_>) -> Command {
    let mut cmd = clean_command(bin("discomy-cc"));
    cmd.arg(compiler)
        .args(args)
        .env("DISCOMY_SOCKET", env.socket)
        .env("DISCOMY_STATS_FILE", env.stats)
        .env("TMPDIR", env.tmp);
    cmd
}

/// Compiles each source with `compiler` directly and through discomy-cc; returns every
/// difference and every stats line that is not one `remote` compile.
fn compile_each(
    src: &Path,
    compiler: &Path,
    extra: &[String],
    env: &WrapperEnv<'_>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for source in SOURCES {
        let args = lua_args(extra, source, &[]);
        let what = format!("{} {}", compiler.display(), args.join(" "));
        let mut direct = clean_command(compiler);
        direct.args(&args);
        let expected = capture(src, &mut direct);
        assert_eq!(expected.code, Some(0), "{what}: {}", String::from_utf8_lossy(&expected.stderr));
        assert!(
            expected.stderr.is_empty(),
            "{what}: the compiler itself warns, so discomy-cc would compile locally:\n{}",
            String::from_utf8_lossy(&expected.stderr)
        );

        let before = read_stats(env.stats).len();
        let started = Instant::now();
        let actual = capture(src, &mut wrapper_command(compiler, &args, env));
        let after = read_stats(env.stats);
        let new = &after[before.min(after.len())..];
        eprintln!("[e2e] {what}: {new:?} in {:.1?}", started.elapsed());
        problems.extend(diff_captures(&what, &expected, &actual));
        if new.len() != 1 || new[0].outcome != "remote" {
            problems.push(format!("{what}: expected one remote compile in the stats, got {new:?}"));
        }
    }
    problems
}

/// The toolchains a store installed (`discomy stats`' `installed`): (name, digest).
fn installs(store: &serde_json::Value) -> Vec<(String, String)> {
    store["installed"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    let field = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                    (field("name"), field("digest"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Installs of gcc 11 toolchains (their manifest name is `gcc 11.…`).
fn gcc11_installs(store: &serde_json::Value) -> Vec<(String, String)> {
    installs(store).into_iter().filter(|(name, _)| name.starts_with("gcc 11.")).collect()
}

/// Blobs a store received from peers, and how many of them it had received before.
fn received_blobs(store: &serde_json::Value) -> (u64, u64) {
    let count = |k: &str| store[k].as_u64().unwrap_or(0);
    (count("blobs_received"), count("blobs_received_again"))
}

#[test]
fn private_gcc11_is_shipped_and_objects_identical() {
    let gcc11 = gcc11();
    let expected_identity = collect(&gcc11, &[], &path_var()).unwrap().manifest.digest();
    eprintln!("[e2e] gcc 11 toolchain: {expected_identity}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = extract_lua(tmp.path()).join("src");
    let mut farm = Farm::start(tmp.path(), 1, 2);
    let stats = tmp.path().join("stats.tsv");
    let wrapper_tmp = private_tmp(tmp.path(), "wrapper");
    let mut show = ShowOnFailure::default();
    show.add("wrapper stats", &stats);
    let env = WrapperEnv { socket: &farm.agent.socket, stats: &stats, tmp: &wrapper_tmp };
    assert!(
        gcc11_installs(&worker_stats(&farm.workers[0].addr)["store"]).is_empty(),
        "the worker already holds a gcc 11 before anything was sent"
    );

    let problems = compile_each(&src, &gcc11, &[], &env);
    farm.assert_alive();
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));

    let agent = agent_stats(&farm.agent.socket);
    assert!(
        agent["store"]["toolchains_pushed"].as_u64() >= Some(1),
        "the agent never pushed a toolchain: {agent}"
    );
    let pushed = agent["store"]["pushed"].as_array().cloned().unwrap_or_default();
    assert!(
        pushed.iter().any(|p| p["digest"].as_str() == Some(expected_identity.to_hex().as_str())),
        "the agent's push records lack gcc 11: {pushed:?}"
    );
    let worker_all = worker_stats(&farm.workers[0].addr);
    let compiled = worker_all["recent_units"].as_array().map_or(0, Vec::len);
    assert!(compiled >= SOURCES.len(), "the worker lists {compiled} compiled units: {worker_all}");
    let worker = worker_all["store"].clone();
    let installs = gcc11_installs(&worker);
    assert_eq!(
        installs.len(),
        1,
        "the worker must install gcc 11 exactly once for {} units; gcc 11 installs: {installs:?}",
        SOURCES.len(),
    );
    assert_eq!(
        installs[0].1,
        expected_identity.to_hex(),
        "the installed toolchain is not the manifest discomy-cc's collect() computes for gcc 11"
    );
    let (_, again) = received_blobs(&worker);
    assert_eq!(again, 0, "blobs received more than once: {worker}");
}

/// Builds `myplugin.so` and writes `el.specs` into `dir`.
fn build_specs_and_plugin(dir: &Path) -> (PathBuf, PathBuf) {
    let specs = dir.join("el.specs");
    fs::write(&specs, EL_SPECS).unwrap();
    let source = dir.join("plugin.cc");
    fs::write(&source, PLUGIN_SOURCE).unwrap();
    let plugin = dir.join("myplugin.so");
    let plugin_dir = clean_command("gcc").arg("-print-file-name=plugin").output().unwrap();
    let include = format!("-I{}/include", String::from_utf8_lossy(&plugin_dir.stdout).trim());
    let out = clean_command("g++")
        .args(["-shared", "-fPIC", "-fno-rtti", "-O1", &include, "-o"])
        .arg(&plugin)
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "g++ plugin (needs gcc-12-plugin-dev; run scripts/setup-debian.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (specs, plugin)
}

#[test]
fn el_specs_and_plugin_distribute() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The specs file and the plugin live outside /tmp: on the worker the unit directory is the
    // sandbox's /tmp, as on a build host they live under /usr/lib/rpm/redhat.
    let fixtures = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let fixtures_dir = fixtures.path().canonicalize().unwrap();
    let (specs, plugin) = build_specs_and_plugin(&fixtures_dir);
    let extra =
        vec![format!("-specs={}", specs.display()), format!("-fplugin={}", plugin.display())];
    let gcc = system_gcc();
    let extras = extras_for_args(&extra, &gcc, &path_var()).unwrap();
    let expected_identity = collect(&gcc, &extras, &path_var()).unwrap().manifest.digest();
    eprintln!("[e2e] gcc + el.specs + myplugin.so toolchain: {expected_identity}");

    let src = extract_lua(tmp.path()).join("src");
    let mut farm = Farm::start(tmp.path(), 1, 2);
    let stats = tmp.path().join("stats.tsv");
    let wrapper_tmp = private_tmp(tmp.path(), "wrapper");
    let mut show = ShowOnFailure::default();
    show.add("wrapper stats", &stats);
    let env = WrapperEnv { socket: &farm.agent.socket, stats: &stats, tmp: &wrapper_tmp };

    let problems = compile_each(&src, &gcc, &extra, &env);
    // The plugin ran on the worker: its section is in the object the farm returns.
    let args = lua_args(&extra, "lapi.c", &["-o", "plugin-check.o"]);
    let out = wrapper_command(&gcc, &args, &env).current_dir(&src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_stats(&stats).last().map(|l| l.outcome.as_str()), Some("remote"));
    let object = fs::read(src.join("plugin-check.o")).unwrap();
    assert!(
        object.windows(18).any(|w| w == b"discomy-plugin-ran"),
        "the object lacks the plugin's .discomy_plugin section"
    );
    farm.assert_alive();
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));

    let worker = worker_stats(&farm.workers[0].addr)["store"].clone();
    let all = installs(&worker);
    let matching = all.iter().filter(|(_, d)| *d == expected_identity.to_hex()).count();
    assert_eq!(
        matching, 1,
        "the worker must install the gcc + specs + plugin toolchain {expected_identity} exactly \
         once; its installs: {all:?}"
    );
}

#[test]
fn two_agents_one_transfer() {
    let gcc11 = gcc11();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = extract_lua(tmp.path()).join("src");
    let mut worker = Worker::start(tmp.path(), "worker0", 4);
    let mut agents: Vec<Agent> = ["agent-a", "agent-b"]
        .iter()
        .map(|name| Agent::start(tmp.path(), name, &worker.host_spec()))
        .collect();
    assert!(
        gcc11_installs(&worker_stats(&worker.addr)["store"]).is_empty(),
        "fresh worker holds gcc 11"
    );
    let mut show = ShowOnFailure::default();

    // The reference object.
    let mut direct = clean_command(&gcc11);
    direct.current_dir(&src).args(lua_args(&[], "lvm.c", &["-o", "lvm-local.o"]));
    let out = direct.output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = fs::read(src.join("lvm-local.o")).unwrap();

    // Both wrappers start at the same moment, one per agent.
    let mut runs: Vec<(Proc, PathBuf, PathBuf)> = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let tag = ["a", "b"][i];
        let stats = tmp.path().join(format!("stats-{tag}.tsv"));
        show.add(&format!("wrapper {tag} stats"), &stats);
        let wrapper_tmp = private_tmp(tmp.path(), &format!("wrapper-{tag}"));
        let env = WrapperEnv { socket: &agent.socket, stats: &stats, tmp: &wrapper_tmp };
        let object = format!("lvm-{tag}.o");
        let args = lua_args(&[], "lvm.c", &["-o", &object]);
        let mut cmd = wrapper_command(&gcc11, &args, &env);
        cmd.current_dir(&src);
        runs.push((
            Proc::spawn(&format!("cc-{tag}"), &mut cmd, tmp.path()),
            stats,
            src.join(object),
        ));
    }
    let mut problems = Vec::new();
    for (proc, stats, object) in &mut runs {
        let status = proc.wait_timeout(WRAPPER_TIMEOUT);
        let name = proc.name().to_owned();
        if !status.success() || !proc.stderr_text().is_empty() {
            problems.push(format!("{name}: {status}\n{}", proc.logs(40)));
        }
        let lines: Vec<StatLine> = read_stats(stats);
        if lines.len() != 1 || lines[0].outcome != "remote" {
            problems.push(format!("{name}: expected one remote compile, stats {lines:?}"));
        }
        match fs::read(&*object) {
            Ok(bytes) if bytes == expected => {}
            Ok(bytes) => problems.push(format!(
                "{name}: {} differs from the local object ({})",
                object.display(),
                discomy_tests::describe_difference(&expected, &bytes)
            )),
            Err(e) => problems.push(format!("{name}: {}: {e}", object.display())),
        }
    }
    assert!(worker.proc.try_wait().is_none(), "the worker died");
    for agent in &mut agents {
        assert!(agent.proc.try_wait().is_none(), "{} died", agent.proc.name());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let store = worker_stats(&worker.addr)["store"].clone();
    let installs = gcc11_installs(&store);
    assert_eq!(
        installs.len(),
        1,
        "two agents shipping gcc 11 at once must cause one install; gcc 11 installs: {installs:?}"
    );
    let (blobs, again) = received_blobs(&store);
    assert!(blobs > 0, "the worker received no blob although it installed a toolchain it lacked");
    assert_eq!(again, 0, "blobs received more than once ({blobs} blobs in all): {store}");
    eprintln!("[e2e] one install, {blobs} blobs each received once");
    let senders = agents
        .iter()
        .filter(|a| agent_stats(&a.socket)["store"]["toolchains_pushed"].as_u64() >= Some(1))
        .count();
    assert!(senders >= 1, "no agent pushed the toolchain");
}
