//! `scripts/install.sh` and `scripts/configure.sh` into a temporary root, and `scripts/release.sh
//! --dry-run` in a temporary clone:
//! - install twice: the first run installs the layout of rpm/discomy.spec (binaries, masquerade
//!   links, units, sysusers, configuration, manifest), the second says "no changes" and changes
//!   no file;
//! - configure with flags writes the role variables and the token (twice: the second writes
//!   nothing), and refuses bad input (an unknown role, a malformed address, a join token
//!   without the farm CA, `--fleet` without the coordinator role);
//! - an edited configuration file survives a re-install (no .new while what is shipped did not
//!   change) and `--uninstall`, which leaves nothing else; `--uninstall --purge` leaves nothing;
//! - `release.sh VERSION --dry-run --no-rpm` in a clone shows the bump and the CHANGELOG's new
//!   section without changing the clone; without `--dry-run` it refuses a branch other than
//!   `stable`; on `stable` it bumps Cargo.toml and Cargo.lock, dates the CHANGELOG, commits, tags.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use discomy_tests::{bin_dir, clean_command, workspace_root};

fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

fn install(root: &Path, extra: &[&str]) -> Command {
    let mut cmd = clean_command("bash");
    cmd.arg(script("install.sh")).arg("--root").arg(root).arg("--no-users").args(extra);
    cmd
}

fn configure(root: &Path, extra: &[&str]) -> Command {
    let mut cmd = clean_command("bash");
    cmd.arg(script("configure.sh")).arg("--root").arg(root).args(extra);
    cmd
}

/// Every path under `root`, relative, sorted, with a type mark and for files their content hash
/// (`cksum`), so that two snapshots differ when anything changed.
fn snapshot(root: &Path) -> Vec<String> {
    let out = ok(Command::new("sh").arg("-c").arg(
        "cd \"$1\" && find . -printf '%y %m %p %l\\n' | sort && find . -type f -exec cksum {} + | sort",
    )
    .arg("sh")
    .arg(root));
    out.lines().map(str::to_owned).collect()
}

fn files_under(root: &Path) -> Vec<String> {
    let out = ok(Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -mindepth 1 | sort")
        .arg("sh")
        .arg(root));
    out.lines().map(str::to_owned).collect()
}

#[test]
fn install_configure_uninstall_purge_in_a_temporary_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let from = bin_dir();
    let from = from.to_str().unwrap();

    let first = ok(&mut install(&root, &["--from", from]));
    assert!(!first.contains("no changes"), "{first}");
    for path in [
        "usr/bin/discomy",
        "usr/bin/discomy-compilerd",
        "usr/bin/discomy-sandbox",
        "usr/bin/discomy-coordinator",
        "usr/libexec/discomy/discomy-cc",
        "usr/libexec/discomy/chroot-run.sh",
        "usr/libexec/discomy/mock/discomy/settings",
        "usr/libexec/discomy/configure.sh",
        "usr/share/discomy/el9/macros.el9",
        "usr/lib/systemd/system/discomy-agent.service",
        "usr/lib/systemd/system/discomy-coordinator.service",
        "usr/lib/sysusers.d/discomy.conf",
        "etc/discomy/agent.env",
        "etc/discomy/builder.toml",
        "etc/discomy/coordinator.toml",
        "var/lib/discomy/install-manifest",
        "usr/share/man/man1/discomy.1",
        "usr/share/bash-completion/completions/discomy-compilerd",
    ] {
        assert!(root.join(path).is_file(), "{path} not installed:\n{first}");
    }
    for link in ["usr/bin/discomy-cc", "usr/libexec/discomy/bin/gcc", "usr/libexec/discomy/bin/c++"]
    {
        let target = fs::read_link(root.join(link)).unwrap();
        assert!(target.to_string_lossy().ends_with("discomy-cc"), "{link} -> {target:?}");
    }
    let version = ok(Command::new(root.join("usr/bin/discomy")).arg("--version"));
    assert!(version.starts_with("discomy "), "{version}");
    let before = snapshot(&root);
    let second = ok(&mut install(&root, &["--from", from]));
    assert!(second.contains("no changes"), "the second run changed something:\n{second}");
    assert_eq!(before, snapshot(&root), "the second run changed files");

    // configure.sh: flags, then the same flags again.
    let token = "vfarm-test-token-0123";
    let flags = [
        "--role",
        "worker,agent",
        "--coordinator",
        "10.1.2.3:3634",
        "--token",
        token,
        "--slots",
        "3",
        "--socket-group",
        "everyone",
    ];
    let configured = ok(&mut configure(&root, &flags));
    assert!(configured.contains("not starting anything"), "{configured}");
    let worker_env = fs::read_to_string(root.join("etc/discomy/worker.env")).unwrap();
    assert!(worker_env.lines().any(|l| l == "DISCOMY_COORDINATOR=10.1.2.3:3634"), "{worker_env}");
    assert!(
        worker_env
            .lines()
            .any(|l| l == "DISCOMY_WORKER_ARGS=--token-file /etc/discomy/token --slots 3"),
        "{worker_env}"
    );
    let agent_env = fs::read_to_string(root.join("etc/discomy/agent.env")).unwrap();
    assert!(
        agent_env
            .lines()
            .any(|l| l
                == "DISCOMY_AGENT_ARGS=--token-file /etc/discomy/token --socket-group everyone"),
        "{agent_env}"
    );
    assert_eq!(fs::read_to_string(root.join("etc/discomy/token")).unwrap(), format!("{token}\n"));
    let before = snapshot(&root);
    let again = ok(&mut configure(&root, &flags));
    assert!(!again.contains("wrote"), "the second configure wrote files:\n{again}");
    assert_eq!(before, snapshot(&root));
    for (bad, why) in [
        (&["--role", "donor", "--coordinator", "c1"][..], "unknown role"),
        (&["--role", "worker", "--coordinator", "bad host!"][..], "expected HOST[:PORT]"),
        (&["--role", "worker", "--coordinator", "c1", "--join-token", "x"][..], "--ca FILE"),
        (&["--role", "worker", "--coordinator", "c1", "--fleet"][..], "--fleet goes with"),
        (&["--role", "builder", "--coordinator", "c1"][..], "--chroot"),
    ] {
        let out = run(&mut configure(&root, bad));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{bad:?}: {err}");
    }
    assert_eq!(before, snapshot(&root), "a refused configure changed files");

    // Re-installing keeps the edited files as they are (what is shipped did not change: no .new).
    let third = ok(&mut install(&root, &["--from", from]));
    assert!(third.contains("no changes"), "{third}");
    assert!(!root.join("etc/discomy/agent.env.new").exists());
    assert_eq!(fs::read_to_string(root.join("etc/discomy/agent.env")).unwrap(), agent_env);

    let removed = ok(&mut install(&root, &["--uninstall"]));
    eprintln!("[install] {removed}");
    assert_eq!(
        files_under(&root),
        [
            "./etc",
            "./etc/discomy",
            "./etc/discomy/.install-manifest",
            "./etc/discomy/agent.env",
            "./etc/discomy/token",
            "./etc/discomy/worker.env",
        ],
        "uninstall leaves only the edited configuration"
    );
    ok(&mut install(&root, &["--uninstall", "--purge"]));
    assert_eq!(files_under(&root), Vec::<String>::new(), "--purge leaves nothing");
    let nothing = ok(&mut install(&root, &["--uninstall"]));
    assert!(nothing.contains("nothing to uninstall"), "{nothing}");
}

fn git(dir: &Path, args: &[&str]) -> String {
    ok(clean_command("git").current_dir(dir).args(args))
}

#[test]
fn release_dry_run_in_a_clone() {
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("clone");
    let top = workspace_root();
    ok(clean_command("git")
        .args(["clone", "--quiet", "--no-hardlinks", "--branch", "main"])
        .arg(&top)
        .arg(&clone));
    // The clone has the committed tree: bring this work tree's release files in and commit them,
    // so the test checks the scripts as they are now.
    for file in ["scripts/release.sh", "CHANGELOG.md", "rpm/make-tarball.sh", "rpm/changelog.sh"] {
        fs::copy(top.join(file), clone.join(file)).unwrap();
    }
    git(&clone, &["-c", "user.name=t", "-c", "user.email=t@example.invalid", "add", "-A"]);
    git(
        &clone,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "--quiet",
            "--allow-empty",
            "-m",
            "release files",
        ],
    );
    let head = git(&clone, &["rev-parse", "HEAD"]);
    let cargo_toml = fs::read_to_string(clone.join("Cargo.toml")).unwrap();
    let release = |args: &[&str]| {
        let mut cmd = clean_command("bash");
        cmd.current_dir(&clone)
            .arg(clone.join("scripts/release.sh"))
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid");
        cmd
    };

    let dry = ok(&mut release(&["9.8.7", "--dry-run", "--no-rpm"]));
    assert!(dry.contains("version = \"9.8.7\""), "the dry run shows no bump:\n{dry}");
    assert!(dry.contains("## [9.8.7] - "), "the dry run shows no CHANGELOG section:\n{dry}");
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), head, "the dry run committed");
    assert_eq!(git(&clone, &["tag", "--list"]), "", "the dry run tagged");
    assert_eq!(fs::read_to_string(clone.join("Cargo.toml")).unwrap(), cargo_toml);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "", "the dry run left changes");

    let out = run(&mut release(&["9.8.7", "--no-rpm"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("stable"), "released from main: {err}");
    let out = run(&mut release(&["bogus", "--dry-run", "--no-rpm"]));
    assert!(!out.status.success(), "accepted version 'bogus'");

    git(&clone, &["checkout", "--quiet", "-b", "stable"]);
    ok(&mut release(&["9.8.7", "--no-rpm"]));
    let toml = fs::read_to_string(clone.join("Cargo.toml")).unwrap();
    assert!(toml.contains("[workspace.package]\nversion = \"9.8.7\""), "{toml}");
    let lock = fs::read_to_string(clone.join("Cargo.lock")).unwrap();
    assert!(lock.contains("name = \"discomy-compilerd\"\nversion = \"9.8.7\""), "Cargo.lock");
    let changelog = fs::read_to_string(clone.join("CHANGELOG.md")).unwrap();
    assert!(changelog.contains("## [Unreleased]\n\n## [9.8.7] - "), "{changelog}");
    assert_eq!(git(&clone, &["tag", "--list"]).trim(), "v9.8.7");
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
    let out = run(&mut release(&["9.8.7", "--no-rpm"]));
    assert!(!out.status.success(), "released 9.8.7 twice");
}

#[test]
fn the_scripts_pass_shellcheck() {
    let found = Command::new("sh").arg("-c").arg("command -v shellcheck >/dev/null").status();
    let found = match found {
        Ok(s) if s.success() => Ok(()),
        _ => Err("shellcheck is missing (scripts/setup-debian.sh)".to_owned()),
    };
    if discomy_tests::or_skip("shellcheck", found).is_none() {
        return;
    }
    let top = workspace_root();
    let scripts = [
        "scripts/install.sh",
        "scripts/configure.sh",
        "scripts/vfarm",
        "scripts/release.sh",
        "scripts/record-lto-trace.sh",
        "scripts/lto-partitions.sh",
        "rpm/make-tarball.sh",
        "rpm/changelog.sh",
    ];
    let mut cmd = clean_command("shellcheck");
    cmd.current_dir(&top).args(scripts);
    ok(&mut cmd);
}
