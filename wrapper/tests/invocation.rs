//! Process-level tests of how `discomy-cc` is invoked: explicit, implicit, launcher and
//! masquerade forms all run the real gcc, never themselves, and the wrapper keeps stdout clean.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const WRAPPER: &str = env!("CARGO_BIN_EXE_discomy-cc");

fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "discomy-inv-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> Output {
    // The path without an agent and without the object cache (which earlier runs would fill).
    cmd.env_remove("DISCOMY_SOCKET").env("DISCOMY_SOCKET", "/nonexistent/discomy.sock");
    cmd.env("DISCOMY_CACHE", "0");
    cmd.output().unwrap()
}

fn masquerade(dir: &Path) -> PathBuf {
    let bin = dir.join("masq");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["gcc", "cc"] {
        std::os::unix::fs::symlink(WRAPPER, bin.join(name)).unwrap();
    }
    bin
}

fn path_with(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

#[test]
fn version_passthrough_matches_real_gcc_in_every_form() {
    let real = Command::new("gcc").arg("--version").output().unwrap();
    assert!(real.status.success());
    let dir = tmp();
    let bin = masquerade(&dir);
    let forms: Vec<Command> = vec![
        {
            let mut c = Command::new(WRAPPER);
            c.args(["gcc", "--version"]);
            c
        },
        {
            let mut c = Command::new(bin.join("gcc"));
            c.arg("--version").env("PATH", path_with(&bin));
            c
        },
        {
            // CMake launcher with CC pointing into the masquerade directory: must not loop.
            let mut c = Command::new(WRAPPER);
            c.arg(bin.join("gcc")).arg("--version").env("PATH", path_with(&bin));
            c
        },
    ];
    for mut cmd in forms {
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, real.stdout, "{cmd:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn implicit_cc_and_launcher_compile_identically_without_an_agent() {
    let dir = tmp();
    std::fs::write(dir.join("u.c"), "int f(int x) { return x * 3; }\n").unwrap();
    let local = Command::new("cc")
        .current_dir(&dir)
        .args(["-O2", "-c", "u.c", "-o", "local.o"])
        .output()
        .unwrap();
    assert!(local.status.success());
    let stats = dir.join("stats");
    for (i, args) in
        [vec!["-O2", "-c", "u.c"], vec!["/usr/bin/cc", "-O2", "-c", "u.c"]].iter().enumerate()
    {
        let out_name = format!("w{i}.o");
        let mut cmd = Command::new(WRAPPER);
        cmd.current_dir(&dir).args(args).args(["-o", &out_name]).env("DISCOMY_STATS_FILE", &stats);
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty());
        assert_eq!(
            std::fs::read(dir.join(&out_name)).unwrap(),
            std::fs::read(dir.join("local.o")).unwrap()
        );
    }
    let stats = std::fs::read_to_string(&stats).unwrap();
    assert_eq!(stats.lines().count(), 2, "{stats}");
    assert!(stats.lines().all(|l| l == "fallback\t0\tu.c\tno_agent"), "{stats}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn disabled_compiles_count_as_local() {
    let dir = tmp();
    std::fs::write(dir.join("u.c"), "int g;\n").unwrap();
    let stats = dir.join("stats");
    let mut cmd = Command::new(WRAPPER);
    cmd.current_dir(&dir)
        .args(["gcc", "-c", "u.c"])
        .env("DISCOMY_DISABLE", "1")
        .env("DISCOMY_STATS_FILE", &stats);
    let out = run(&mut cmd);
    assert!(out.status.success());
    assert!(dir.join("u.o").exists());
    assert_eq!(std::fs::read_to_string(&stats).unwrap(), "local\t0\tu.c\tdisabled\n");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_compiler_is_a_clear_error_on_stderr() {
    let out = run(Command::new(WRAPPER).args(["no-such-compiler-xyz", "-c", "a.c"]));
    assert_eq!(out.status.code(), Some(127));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-compiler-xyz") && err.contains("PATH"), "{err}");
    let out = run(&mut Command::new(WRAPPER));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

#[test]
fn compile_errors_and_status_are_the_compilers_own() {
    let dir = tmp();
    std::fs::write(dir.join("bad.c"), "int f(void) { return undeclared; }\n").unwrap();
    let real = Command::new("gcc").current_dir(&dir).args(["-c", "bad.c"]).output().unwrap();
    let wrapped = run(Command::new(WRAPPER).current_dir(&dir).args(["gcc", "-c", "bad.c"]));
    assert_eq!(wrapped.status.code(), real.status.code());
    assert_eq!(wrapped.stdout, real.stdout);
    assert_eq!(wrapped.stderr, real.stderr);
    assert!(!dir.join("bad.o").exists());
    std::fs::remove_dir_all(dir).unwrap();
}
