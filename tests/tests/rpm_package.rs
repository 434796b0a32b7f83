//! The RPM package (`rpm/discomy.spec`), built for real: `rpm/make-tarball.sh` makes the sources
//! (vendored crates, offline), Debian's `rpmbuild -ba` builds the workspace in release and the
//! five packages, then:
//! - `rpm -qlp` of each binary RPM lists the expected files (binaries, the masquerade links,
//!   units, sysusers, configuration, man pages, completions, licences);
//! - the RPMs are extracted into a temporary root, where `systemd-analyze verify --root` checks
//!   the four units (their `ExecStart=` binaries resolved inside that root);
//! - the extracted binaries run `--version` and print the workspace's version;
//! - `rpmlint` (PyPI) reports no errors (its warnings are printed);
//! - `rpm -q --changelog` shows CHANGELOG.md's latest entry (the spec's `%changelog` is generated
//!   from it by `rpm/changelog.sh`): the workspace version's section, or the Unreleased one while
//!   that version has none, its first item as the first line under an entry for `VERSION-1`.
//!
//! Cargo's target directory stays in `target/rpm-test/cargo-target`, so a second run only
//! rebuilds discomy's own crates. Without the tools the test is skipped with a message, unless
//! `CI` is set: then it fails.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use discomy_tests::{clean_command, workspace_root};

const TOOLS: &[&str] =
    &["rpmbuild", "rpm", "rpm2cpio", "cpio", "systemd-analyze", "rpmlint", "cargo", "git"];

fn prerequisites() -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|tool| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool} >/dev/null"))
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    let found = match missing.is_empty() {
        true => Ok(()),
        false => Err(format!("missing {} (run scripts/setup-debian.sh)", missing.join(", "))),
    };
    discomy_tests::or_skip("rpm_package", found).is_some()
}

/// A command without the test's own cargo environment (target, flags of the outer build).
fn command(program: &str) -> Command {
    let mut cmd = clean_command(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || matches!(k.as_ref(), "RUSTFLAGS" | "RUSTC" | "RUSTC_WRAPPER" | "RUSTDOCFLAGS")
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

fn workspace_version() -> String {
    let toml = fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let section = toml.split("[workspace.package]").nth(1).unwrap();
    let line = section.lines().find(|l| l.starts_with("version = ")).unwrap();
    line.trim_start_matches("version = ").trim_matches('"').to_owned()
}

/// The first `%changelog` line `rpm/changelog.sh` makes from CHANGELOG.md for `version`: the
/// first item (its lines joined) of the version's own section, or of Unreleased when it has none;
/// a subsection other than Added is a prefix ("Fixed: ").
fn latest_changelog_item(version: &str) -> String {
    let text = fs::read_to_string(workspace_root().join("CHANGELOG.md")).unwrap();
    let own = format!("## [{version}]");
    let wanted =
        if text.lines().any(|l| l.starts_with(&own)) { own } else { "## [Unreleased]".into() };
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&wanted)).skip(1);
    let mut prefix = String::new();
    let mut item = String::new();
    for line in lines.by_ref() {
        assert!(!line.starts_with("## ["), "CHANGELOG.md: {wanted} lists nothing");
        if let Some(sub) = line.strip_prefix("### ") {
            prefix = if sub == "Added" { String::new() } else { format!("{sub}: ") };
        } else if let Some(first) = line.strip_prefix("- ") {
            item = first.to_owned();
            break;
        }
    }
    for line in lines.take_while(|l| l.starts_with("  ")) {
        item.push(' ');
        item.push_str(line.trim());
    }
    format!("- {prefix}{item}")
}

fn rpm_named(dir: &Path, name: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            file.starts_with(&format!("{name}-"))
                && file[name.len() + 1..].starts_with(|c: char| c.is_ascii_digit())
        })
        .collect();
    assert_eq!(found.len(), 1, "one {name} RPM in {}: {found:?}", dir.display());
    found.into_iter().next().unwrap()
}

#[test]
fn rpm_package() {
    if !prerequisites() {
        return;
    }
    let started = Instant::now();
    let root = workspace_root();
    let base = root.join("target").join("rpm-test");
    let (sources, top, extracted) = (base.join("sources"), base.join("top"), base.join("root"));
    for dir in [&sources, &top, &extracted] {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).unwrap();
    }
    let version = workspace_version();

    let tarball = run(command("sh").arg(root.join("rpm/make-tarball.sh")).arg(&sources));
    assert!(tarball.trim().ends_with(&format!("discomy-{version}.tar.gz")), "{tarball}");
    let spec = sources.join("discomy.spec");
    let spec_text = fs::read_to_string(&spec).unwrap();
    for placeholder in ["@VERSION@", "@BUNDLED_PROVIDES@", "@CHANGELOG@"] {
        assert!(!spec_text.contains(placeholder), "{placeholder} left in {}", spec.display());
    }
    let def = |name: &str, value: &Path| format!("{name} {}", value.display());
    // --nodeps: Debian's RPM database does not know cargo, rust, glibc-static.
    let log = run(command("rpmbuild")
        .args(["-ba", "--nodeps", "--define"])
        .arg(def("_topdir", &top))
        .arg("--define")
        .arg(def("_sourcedir", &sources))
        .arg("--define")
        .arg(def("discomy_cargo_target_dir", &base.join("cargo-target")))
        .arg(&spec));
    eprintln!("[rpm] rpmbuild done after {:?}", started.elapsed());

    let arch = top.join("RPMS").join("x86_64");
    let noarch = top.join("RPMS").join("noarch");
    let packages = [
        (
            rpm_named(&arch, "discomy"),
            vec![
                "/usr/bin/discomy",
                "/usr/lib/sysusers.d/discomy.conf",
                "/etc/discomy",
                "/usr/share/man/man1/discomy.1",
                "/usr/share/man/man1/discomy-submit.1",
                "/usr/share/bash-completion/completions/discomy",
                "/usr/share/zsh/site-functions/_discomy",
                "/usr/share/fish/vendor_completions.d/discomy.fish",
                "/usr/share/licenses/discomy/LICENSE-MIT",
                "/usr/share/licenses/discomy/LICENSE-APACHE",
            ],
        ),
        (
            rpm_named(&arch, "discomy-cc"),
            vec![
                "/usr/bin/discomy-cc",
                "/usr/libexec/discomy/discomy-cc",
                "/usr/libexec/discomy/bin/gcc",
                "/usr/libexec/discomy/bin/g++",
                "/usr/libexec/discomy/bin/cc",
                "/usr/libexec/discomy/bin/c++",
                "/usr/share/licenses/discomy-cc/LICENSE-MIT",
            ],
        ),
        (
            rpm_named(&arch, "discomy-compilerd"),
            vec![
                "/usr/bin/discomy-compilerd",
                "/usr/bin/discomy-sandbox",
                "/usr/libexec/discomy/chroot-run.sh",
                "/usr/libexec/discomy/mock/discomy/settings",
                "/usr/share/discomy/el9/macros.el9",
                "/usr/lib/systemd/system/discomy-agent.service",
                "/usr/lib/systemd/system/discomy-worker.service",
                "/usr/lib/systemd/system/discomy-builder.service",
                "/etc/discomy/agent.env",
                "/etc/discomy/worker.env",
                "/etc/discomy/builder.env",
                "/etc/discomy/builder.toml",
                "/usr/share/man/man1/discomy-compilerd-worker.1",
                "/usr/share/bash-completion/completions/discomy-compilerd",
                "/usr/share/licenses/discomy-compilerd/LICENSE-APACHE",
            ],
        ),
        (
            rpm_named(&arch, "discomy-coordinator"),
            vec![
                "/usr/bin/discomy-coordinator",
                "/usr/lib/systemd/system/discomy-coordinator.service",
                "/etc/discomy/coordinator.env",
                "/etc/discomy/coordinator.toml",
                "/usr/share/man/man1/discomy-coordinator.1",
                "/usr/share/zsh/site-functions/_discomy-coordinator",
                "/usr/share/licenses/discomy-coordinator/LICENSE-MIT",
            ],
        ),
        (
            rpm_named(&noarch, "discomy-mock"),
            vec![
                "/etc/mock/discomy.cfg",
                "/etc/mock/discomy/settings",
                "/etc/mock/discomy/profile.sh",
                "/usr/share/licenses/discomy-mock/LICENSE-MIT",
            ],
        ),
    ];
    for (rpm, expected) in &packages {
        let listed = run(command("rpm").arg("-qlp").arg(rpm));
        let files: Vec<&str> = listed.lines().collect();
        for path in expected {
            // Man pages get rpm's compression suffix (.gz on Fedora, .bz2 with Debian's rpm).
            let compressed = format!("{path}.");
            assert!(
                files.iter().any(|f| f == path || f.starts_with(&compressed)),
                "{} lacks {path}:\n{listed}",
                rpm.display()
            );
        }
        let config = run(command("rpm").args(["-qcp"]).arg(rpm));
        for path in expected.iter().filter(|p| p.starts_with("/etc/") && p.contains('.')) {
            assert!(config.lines().any(|l| l == *path), "{path} is not %config:\n{config}");
        }
        run(command("sh")
            .arg("-c")
            .arg("rpm2cpio \"$1\" | (cd \"$2\" && cpio -idm --quiet)")
            .arg("sh")
            .arg(rpm)
            .arg(&extracted));
    }

    // Units, with their ExecStart= binaries looked up in the extracted root (a missing or
    // non-executable one fails). The host's own units (targets the ours are ordered after) are
    // copied in beside them; `man:` links are left to the man pages listed above.
    run(command("cp")
        .arg("-rn")
        .arg("/usr/lib/systemd/system/.")
        .arg(extracted.join("usr/lib/systemd/system")));
    let units: Vec<String> = ["agent", "worker", "builder", "coordinator"]
        .iter()
        .map(|role| format!("/usr/lib/systemd/system/discomy-{role}.service"))
        .collect();
    let mut verify = command("systemd-analyze");
    verify.args(["verify", "--man=no"]).arg(format!("--root={}", extracted.display()));
    let out = verify.args(&units).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && !text.contains("discomy"), "systemd-analyze verify:\n{text}");

    for bin in [
        "usr/bin/discomy",
        "usr/bin/discomy-cc",
        "usr/bin/discomy-compilerd",
        "usr/bin/discomy-sandbox",
        "usr/bin/discomy-coordinator",
    ] {
        let printed = run(command(extracted.join(bin).to_str().unwrap()).arg("--version"));
        let name = bin.rsplit('/').next().unwrap();
        assert_eq!(printed.trim(), format!("{name} {version}"), "{bin} --version");
    }

    // %changelog: CHANGELOG.md's latest entry, first.
    let changelog = run(command("rpm").args(["-qp", "--changelog"]).arg(&packages[0].0));
    let mut entry = changelog.lines();
    let header = entry.next().unwrap_or("");
    assert!(
        header.starts_with("* ") && header.ends_with(&format!(" - {version}-1")),
        "the latest %changelog entry is not {version}-1:\n{changelog}"
    );
    assert_eq!(
        entry.next().unwrap_or(""),
        latest_changelog_item(&version),
        "the latest %changelog entry does not start with CHANGELOG.md's latest item"
    );

    // rpmlint: the binary RPMs and the source RPM, no errors.
    let srpm = rpm_named(&top.join("SRPMS"), "discomy");
    let mut lint = command("rpmlint");
    lint.arg("-c")
        .arg(root.join("rpm/rpmlint.toml"))
        .args(packages.iter().map(|(rpm, _)| rpm))
        .arg(&srpm);
    let out = lint.output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("[rpm] rpmlint:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    let summary = report.lines().rev().find(|l| l.contains("errors")).unwrap_or("");
    assert!(summary.contains(" 0 errors"), "rpmlint reports errors: {summary}");
    assert!(log.contains("Wrote:"), "{log}");
    eprintln!("[rpm] done after {:?}", started.elapsed());
}
