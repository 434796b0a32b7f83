//! From a git push to a published, verified repository, and CI told the result (issue 16's
//! end-to-end scenario), with real parts throughout: a git repository holding two real packages
//! from Debian's sources (Lua, compiled through the farm, and argparse, pure Lua), pushed to a
//! bare repository; a webhook signed as GitHub signs it; the coordinator's listener queues the
//! pipeline's batch; a builder builds it in its chroot with the farm under it; the
//! final_aggregator signs the RPMs (rpmsign), makes the metadata (createrepo_c), signs
//! `repomd.xml` (gpg) and switches the repository atomically; Debian's `dnf` installs argparse
//! from it into an empty root with `gpgcheck=1 repo_gpgcheck=1`; `discomy repo verify` passes and
//! the web UI's repositories page shows it; and the commit status reaches a forge API on loopback
//! as `pending`, then `success`. A second push with a broken spec ends in `failure`, and publishes
//! nothing. Last, a file slipped into the repository fails the verify, and the page shows that
//! verify and names the file.
//!
//! Without the chroot, dnf or the signing tools (or not as root) the test is skipped with a
//! message, unless `CI` is set: then it fails.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use discomy_tests::forge::ForgeApi;
use discomy_tests::queue::{
    Builder, QueueCoordinator, RpmFarm, chroot_prerequisites, discomy_json, state_of, wait_for_job,
};
use discomy_tests::{agent_stats, bin, clean_command, workspace_root};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const SECRET: &str = "push-test-hook-secret";
const BUILD: Duration = Duration::from_secs(600);

fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    let tools = ["dnf", "createrepo_c", "rpmsign", "gpg", "git"];
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    let found = chroot_prerequisites()
        .and_then(|f| if missing.is_empty() { Ok(f) } else { Err(format!("missing {missing:?}")) });
    discomy_tests::or_skip("push_to_repository", found)
}

/// `GET /ui/repos` (a loopback client of a coordinator without a token needs no login): the
/// last-verify row of `name`, from its `<tr>` to its `</tr>`.
fn verify_row(api: &str, name: &str) -> String {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
    let t0 = Instant::now();
    let html = agent.get(format!("{api}/ui/repos")).call().unwrap().body_mut().read_to_string();
    let html = html.unwrap();
    eprintln!("[e2e] /ui/repos: {} bytes in {:.1?}", html.len(), t0.elapsed());
    let start = html.find(&format!("<tr id=\"verify-{name}\"")).expect("a last-verify row");
    let row = &html[start..];
    row[..row.find("</tr>").unwrap()].to_string()
}

/// `discomy repo verify REPO --public-key KEY --json`: whether it passed, and what it printed.
fn repo_verify(repo: &Path, public_key: &Path) -> (bool, String) {
    let out = clean_command(bin("discomy"))
        .args(["repo", "verify"])
        .arg(repo)
        .arg("--public-key")
        .arg(public_key)
        .arg("--json")
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(clean_command("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir))
}

fn wait_status(api: &ForgeApi, state: &str) {
    api.wait(&format!("{state} status"), BUILD, |got| {
        got.iter().any(|r| r.body["state"] == state && r.body["context"] == "discomy/el9-x86_64")
    });
}

/// Sends a push webhook for `sha` as GitHub does; returns the queued job ids.
fn push_hook(api: &str, sha: &str, delivery: &str) -> Vec<u64> {
    let body = serde_json::json!({"ref": "refs/heads/c9s", "after": sha,
        "repository": {"full_name": "rpms/lua-stack"}})
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let sig: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .post(format!("{api}/api/v1/hooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", format!("sha256={sig}"))
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(status, 202, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["queued"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

#[test]
fn a_push_ends_in_a_signed_repository_dnf_installs_from_and_a_success_status() {
    let Some((root, sources)) = prerequisites() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The repository: two package directories and the pipeline.
    let bare = dir.join("forge/lua-stack.git");
    fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "c9s"]);
    let work = dir.join("work");
    for (pkg, tarball) in [("lua", "lua-5.4.4.tar.gz"), ("lua-argparse", "argparse-0.7.1.tar.gz")] {
        let d = work.join(pkg);
        fs::create_dir_all(&d).unwrap();
        let spec = workspace_root().join(format!("tests/rpm-projects/{pkg}/{pkg}.spec"));
        fs::copy(spec, d.join(format!("{pkg}.spec"))).unwrap();
        fs::copy(sources.join(tarball), d.join(tarball)).unwrap();
    }
    let checks =
        "[[checks]]\nkind = \"rpmlint\"\non_failure = \"warn\"\n[[checks]]\nkind = \"abidiff\"\n";
    let pipeline = format!(
        "[[targets]]\nchroot = \"el9\"\narch = \"x86_64\"\n[[packages]]\ndir = \"lua\"\n\
         [[packages]]\ndir = \"lua-argparse\"\n{checks}"
    );
    fs::write(work.join(".discomy.toml"), &pipeline).unwrap();
    git(&work, &["init", "-q", "-b", "c9s"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "lua stack"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "c9s"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);

    // The signing key, in a GnuPG home of its own.
    let gnupg = dir.join("gnupg");
    fs::create_dir_all(&gnupg).unwrap();
    run(Command::new("chmod").arg("700").arg(&gnupg));
    let gpg = || {
        let mut c = Command::new("gpg");
        c.args(["--batch", "--no-tty", "--homedir"]).arg(&gnupg);
        c
    };
    run(gpg().args([
        "--passphrase",
        "",
        "--quick-gen-key",
        "Discomy Repo <repo@example.invalid>",
        "rsa2048",
        "sign",
        "never",
    ]));
    let fpr = run(gpg().args(["--with-colons", "--list-secret-keys"]))
        .lines()
        .find_map(|l| l.strip_prefix("fpr:").map(|f| f.trim_matches(':').to_owned()))
        .unwrap();
    let public_key = dir.join("RPM-GPG-KEY-test");
    run(gpg().args(["--armor", "--output"]).arg(&public_key).args(["--export", &fpr]));

    // The coordinator: the repository's hook, its status API, publishing.
    let secret_file = dir.join("hook.secret");
    fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let token_file = dir.join("status.token");
    fs::write(&token_file, "status-token\n").unwrap();
    let statuses = ForgeApi::start(false);
    let status_api = statuses.url.clone();
    let repos_root = dir.join("repos");
    let ops = format!(
        "[ops.queue]\nreport_every_secs = 1.0\nlease_secs = 10.0\nmin_free_disk_bytes = 0\n\
         min_job_memory_bytes = 0\n\
         [[ops.repos]]\nname = \"rpms/lua-stack\"\nforge = \"github\"\nsecret_file = \"{}\"\n\
         clone_url = \"file://{}\"\nstatus_api = \"{status_api}\"\nstatus_token_file = \"{}\"\n\
         [ops.publish]\nrepos_root = \"{}\"\n[ops.publish.signing]\ngnupg_home = \"{}\"\nkey_id = \"{fpr}\"\n",
        secret_file.display(),
        bare.display(),
        token_file.display(),
        repos_root.display(),
        gnupg.display()
    );
    let coordinator = QueueCoordinator::start(dir, &ops);
    let api = coordinator.api.clone();
    let farm = RpmFarm::start(dir, &root);
    let _builder = Builder::start(
        dir,
        "builder1",
        &api,
        &root,
        Some((farm.socket_dir.as_path(), farm.libexec.as_path())),
        None,
    );

    let ids = push_hook(&api.url, &sha, "push-1");
    assert_eq!(ids.len(), 4, "two builds and two checks: {ids:?}");
    wait_status(&statuses, "pending");
    for id in &ids {
        let d = wait_for_job(&api, *id, BUILD, "end", |d| {
            matches!(state_of(d), "succeeded" | "failed" | "cancelled")
        });
        assert_eq!(state_of(&d), "succeeded", "{d:#}");
    }
    wait_status(&statuses, "success");
    // The checks ran after the builds, on the builder, and their reports are kept.
    let (ok, log, _) = {
        let out =
            discomy_tests::queue::discomy_command(&api, &["jobs", "logs", &ids[2].to_string()])
                .output()
                .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), ())
    };
    assert!(ok && log.contains("== rpmlint") && log.contains("lua-argparse"), "{log}");
    let d = discomy_tests::queue::job_detail(&api, ids[3]);
    assert_eq!(d["job"]["name"], "check-abidiff", "{d:#}");
    let stats = agent_stats(&farm.socket);
    assert!(stats["remote"].as_u64().unwrap_or(0) >= 20, "lua compiled through the farm: {stats}");

    // Published: the repository appears (atomically, as a symlink to a generation).
    let repo = repos_root.join("el9-x86_64");
    let start = Instant::now();
    while !repo.join("repodata/repomd.xml.asc").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "nothing published in {}",
            repos_root.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(fs::symlink_metadata(&repo).unwrap().file_type().is_symlink());

    // dnf installs from it, every signature checked, into an empty root.
    let dnf_dir = dir.join("dnf");
    let reposd = dnf_dir.join("repos.d");
    fs::create_dir_all(&reposd).unwrap();
    fs::create_dir_all(dnf_dir.join("log")).unwrap();
    fs::write(
        reposd.join("discomy.repo"),
        format!(
            "[discomy]\nname=discomy\nbaseurl=file://{}\nenabled=1\ngpgcheck=1\nrepo_gpgcheck=1\n\
             gpgkey=file://{}\nmetadata_expire=0\n",
            repo.display(),
            public_key.display()
        ),
    )
    .unwrap();
    let conf = dnf_dir.join("dnf.conf");
    fs::write(&conf, "[main]\ngpgcheck=1\nrepo_gpgcheck=1\ninstall_weak_deps=False\n").unwrap();
    let installroot = dir.join("installroot");
    let out = Command::new("dnf")
        .args([
            "-y",
            "--quiet",
            "--noplugins",
            "--nodocs",
            "--releasever=9",
            "--disablerepo=*",
            "--enablerepo=discomy",
        ])
        .arg(format!("--config={}", conf.display()))
        .arg(format!("--installroot={}", installroot.display()))
        .arg(format!("--setopt=reposdir={}", reposd.display()))
        .arg(format!("--setopt=cachedir={}", dnf_dir.join("cache").display()))
        .arg(format!("--setopt=logdir={}", dnf_dir.join("log").display()))
        .args(["install", "lua-argparse"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dnf: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        installroot.join("usr/share/lua/5.4/argparse.lua").is_file(),
        "argparse.lua not installed"
    );

    // discomy repo verify: every file, checksum and signature; the web UI shows its result.
    let (ok, text) = repo_verify(&repo, &public_key);
    assert!(ok, "verify: {text}");
    let row = verify_row(&api.url, "el9-x86_64");
    assert!(row.contains("data-verdict=\"ok\"") && row.contains("discomy repo verify"), "{row}");

    // A broken spec: failure, and nothing new published.
    let generation = fs::read_link(&repo).unwrap();
    let spec = work.join("lua-argparse/lua-argparse.spec");
    let broken =
        fs::read_to_string(&spec).unwrap().replace("Version:        0.7.1", "Version 0.7.2");
    fs::write(&spec, broken).unwrap();
    // Only the broken package, with the checks: they fail with it (a dependency failed).
    let pipeline = format!(
        "[[targets]]\nchroot = \"el9\"\narch = \"x86_64\"\n[[packages]]\ndir = \"lua-argparse\"\n{checks}"
    );
    fs::write(work.join(".discomy.toml"), pipeline).unwrap();
    git(&work, &["commit", "-q", "-am", "broken"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "c9s"]);
    let sha2 = git(&work, &["rev-parse", "HEAD"]);
    let ids = push_hook(&api.url, &sha2, "push-2");
    let d =
        wait_for_job(&api, ids[0], BUILD, "end", |d| matches!(state_of(d), "succeeded" | "failed"));
    assert_eq!(state_of(&d), "failed", "{d:#}");
    wait_status(&statuses, "failure");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fs::read_link(&repo).unwrap(), generation, "a failed batch was published");
    let (ok, list, _) = discomy_json(&api, &["jobs", "list", "--json"]);
    assert!(ok && list.as_array().unwrap().len() == 7, "{list:#}");
    for id in &ids[1..] {
        let d = wait_for_job(&api, *id, BUILD, "end", |d| state_of(d) == "failed");
        assert_eq!(d["job"]["failure"]["kind"], "dependency", "{d:#}");
    }
    // Tampered with (a file the manifest does not list): the verify fails, and the page says so.
    fs::write(repo.join("Packages/stranger.rpm"), b"not a package").unwrap();
    let (ok, text) = repo_verify(&repo, &public_key);
    assert!(!ok && text.contains("stranger.rpm"), "verify: {text}");
    let row = verify_row(&api.url, "el9-x86_64");
    assert!(
        row.contains("data-verdict=\"failed\"") && row.contains("Packages/stranger.rpm"),
        "{row}"
    );
    drop(farm.agent);
    let _ =
        Command::new("gpgconf").arg("--homedir").arg(&gnupg).args(["--kill", "gpg-agent"]).status();
}
