//! Forge webhooks end to end, against a real coordinator over HTTP: a real git repository the
//! test creates (the Lua package from Debian's sources, its `.discomy.toml`), pushed to a bare
//! repository the coordinator fetches from, and deliveries shaped and signed exactly as GitHub,
//! Gitea and GitLab document them. A push queues the pipeline's batch (the spec and tarball from
//! the pushed commit, by content); replays, wrong signatures, unknown repositories, oversized
//! and malformed bodies are refused with their status, and queue nothing.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use discomy_tests::forge::ForgeApi;

use discomy_tests::queue::{QueueCoordinator, discomy_json, job_detail};
use discomy_tests::{clean_command, lua_tarball};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const SECRET: &str = "hook-secret-for-rpms-lua";
const STATUS_TOKEN: &str = "forge-api-token";
const WAIT: Duration = Duration::from_secs(60);

fn git(dir: &Path, args: &[&str]) -> String {
    let out = clean_command("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// POSTs `body` with `headers`; the status and the body.
fn post(url: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut req = agent.post(url).header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// POSTs an oversized `body` on a plain connection and reads the status line: the server may
/// answer (413) and close before the body is sent in full, which an HTTP client reports as a
/// broken pipe instead of the answer.
fn post_early_answer(url: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    let head = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body); // may fail once the answer is sent
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// A push payload as GitHub documents it (the fields the listener reads, and then some).
fn github_push(sha: &str, before: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": "refs/heads/c9s", "before": before, "after": sha, "created": false,
        "deleted": false, "forced": false,
        "repository": {"id": 1, "name": "lua", "full_name": "rpms/lua",
            "clone_url": "https://forge.invalid/rpms/lua.git", "default_branch": "c9s"},
        "pusher": {"name": "packager"}, "head_commit": {"id": sha, "message": "lua 5.4.4"},
    })
    .to_string()
    .into_bytes()
}

fn github_headers(body: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", "push".into()),
        ("X-GitHub-Delivery", delivery.into()),
        ("X-Hub-Signature-256", format!("sha256={}", sign(body))),
        ("User-Agent", "GitHub-Hookshot/test".into()),
    ]
}

fn job_count(api: &discomy_tests::queue::Api) -> usize {
    let (ok, list, err) = discomy_json(api, &["jobs", "list", "--json"]);
    assert!(ok, "{err}");
    list.as_array().unwrap().len()
}

#[test]
fn pushes_queue_their_pipeline_and_bad_deliveries_queue_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The forge's repository (bare, what the coordinator fetches) and a packager's clone.
    let bare = dir.join("forge/rpms/lua.git");
    fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "c9s"]);
    let work = dir.join("work");
    fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "c9s"]);
    let spec = discomy_tests::workspace_root().join("tests/rpm-projects/lua/lua.spec");
    fs::copy(&spec, work.join("lua.spec")).unwrap();
    fs::copy(lua_tarball(), work.join("lua-5.4.4.tar.gz")).unwrap();
    fs::write(
        work.join(".discomy.toml"),
        "priority = 3\n[[targets]]\nchroot = \"el9\"\narch = \"x86_64\"\n",
    )
    .unwrap();
    // A link in the package directory must not become a source (nor reach the coordinator's files).
    std::os::unix::fs::symlink("/etc/passwd", work.join("passwd")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "lua 5.4.4"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "c9s"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);

    let secret_file = dir.join("lua.secret");
    fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let token_file = dir.join("forge-api.token");
    fs::write(&token_file, format!("{STATUS_TOKEN}\n")).unwrap();
    let statuses = ForgeApi::start(true);
    let forge_api = statuses.url.clone();
    let repos = format!(
        "[[ops.repos]]\nname = \"rpms/lua\"\nforge = \"github\"\nsecret_file = \"{0}\"\n\
         clone_url = \"file://{1}\"\nstatus_api = \"{2}\"\nstatus_token_file = \"{3}\"\n\
         [[ops.repos]]\nname = \"rpms/lua\"\nforge = \"gitlab\"\nsecret_file = \"{0}\"\n\
         clone_url = \"file://{1}\"\n",
        secret_file.display(),
        bare.display(),
        forge_api,
        token_file.display(),
    );
    let coordinator = QueueCoordinator::start(dir, &repos);
    let api = coordinator.api.clone();
    let hook = |forge: &str| format!("{}/api/v1/hooks/{forge}", api.url);

    // Refusals first: nothing may be queued by any of them.
    let body = github_push(&sha, &"0".repeat(40));
    let mut bad = github_headers(&body, "d-0");
    bad[2].1 = format!("sha256={}", "0".repeat(64));
    assert_eq!(post(&hook("github"), &bad, &body).0, 401, "a wrong signature");
    let unsigned: Vec<_> = github_headers(&body, "d-0").into_iter().take(2).collect();
    assert_eq!(post(&hook("github"), &unsigned, &body).0, 401, "no signature");
    let other = body.clone().into_iter().collect::<Vec<u8>>();
    let other = String::from_utf8(other).unwrap().replace("rpms/lua", "rpms/evil").into_bytes();
    assert_eq!(
        post(&hook("github"), &github_headers(&other, "d-0"), &other).0,
        404,
        "unknown repo"
    );
    assert_eq!(post(&hook("github"), &github_headers(b"{not json", "d-0"), b"{not json").0, 400);
    let huge = vec![b' '; 2 << 20];
    assert_eq!(post_early_answer(&hook("github"), &huge), 413, "oversized");
    assert_eq!(post(&hook("bitbucket"), &github_headers(&body, "d-0"), &body).0, 404);
    assert_eq!(job_count(&api), 0, "a refused delivery queued something");

    // The push: one batch with the pipeline's job.
    let (status, answer) = post(&hook("github"), &github_headers(&body, "d-1"), &body);
    assert_eq!(status, 202, "{answer}");
    let queued: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let id = queued["queued"][0].as_u64().unwrap();
    let d = job_detail(&api, id);
    eprintln!("[e2e] queued by the push: {d:#}");
    assert_eq!(d["job"]["priority"], 3);
    assert_eq!(d["job"]["batch"], format!("rpms_lua@{}.el9-x86_64", &sha[..12]));
    assert_eq!(d["job"]["submitter"], "github:rpms_lua");
    assert_eq!(d["job"]["source"]["spec"]["name"], "lua.spec");
    let sources: Vec<&str> = d["job"]["source"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["lua-5.4.4.tar.gz"], "links and dot files stay out");
    let tarball = blake3::hash(&fs::read(lua_tarball()).unwrap()).to_hex().to_string();
    assert_eq!(d["job"]["source"]["sources"][0]["blake3"], tarball, "the pushed bytes");
    assert!(d["job"]["provides"].as_array().unwrap().iter().any(|p| p == "lua-devel"));

    // The commit status: pending (the forge was down at first: retried), then failure once the
    // job ended (cancelled here: no builder in this test), as GitHub documents the request.
    let got = statuses.wait("pending status after the retry", WAIT, |r| r.len() >= 2);
    for r in &got[..2] {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/repos/rpms/lua/statuses/{sha}"));
        assert_eq!(r.header("authorization"), Some(format!("Bearer {STATUS_TOKEN}").as_str()));
        assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
        assert_eq!(r.body["state"], "pending");
        assert_eq!(r.body["context"], "discomy/el9-x86_64");
        assert!(r.body["target_url"].as_str().unwrap().contains("/api/v1/jobs?batch=rpms_lua@"));
    }
    let (ok, _, err) = discomy_json(&api, &["jobs", "cancel", &id.to_string()]);
    assert!(ok, "{err}");
    let got = statuses.wait("the failure status", WAIT, |r| r.len() >= 3);
    assert_eq!(got[2].body["state"], "failure", "{:#?}", got[2]);
    assert!(got[2].body["description"].as_str().unwrap().contains("lua"), "{:#?}", got[2]);

    // The same delivery again: a replay.
    assert_eq!(post(&hook("github"), &github_headers(&body, "d-1"), &body).0, 409);
    assert_eq!(job_count(&api), 1);

    // GitLab: its token header, its payload, its event names.
    let gl = serde_json::json!({"object_kind": "push", "ref": "refs/heads/c9s",
        "before": "0".repeat(40), "after": sha, "checkout_sha": sha,
        "project": {"id": 7, "path_with_namespace": "rpms/lua"}})
    .to_string()
    .into_bytes();
    let gl_headers = |token: &str| {
        vec![
            ("X-Gitlab-Event", "Push Hook".to_owned()),
            ("X-Gitlab-Event-UUID", "g-1".to_owned()),
            ("X-Gitlab-Token", token.to_owned()),
        ]
    };
    assert_eq!(post(&hook("gitlab"), &gl_headers("wrong"), &gl).0, 401);
    let (status, answer) = post(&hook("gitlab"), &gl_headers(SECRET), &gl);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(job_count(&api), 2);

    // A commit whose pipeline file is broken: refused, nothing queued.
    fs::write(work.join(".discomy.toml"), "[[targets]]\nchroot = 5\n").unwrap();
    git(&work, &["commit", "-q", "-am", "broken pipeline"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "c9s"]);
    let broken = git(&work, &["rev-parse", "HEAD"]);
    let body = github_push(&broken, &sha);
    let (status, answer) = post(&hook("github"), &github_headers(&body, "d-2"), &body);
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains(".discomy.toml"), "{answer}");
    assert_eq!(job_count(&api), 2);

    // What `/metrics` says of all this: every delivery by forge and answer, the commit statuses
    // (one refused by the forge that was down, then pending and failure), the jobs by state.
    let metrics = discomy_tests::metrics::scrape(&format!("{}/metrics", api.url));
    let value = |series: &str| discomy_tests::metrics::value(&metrics, series);
    for (series, want) in [
        (r#"discomy_webhook_deliveries_total{forge="github",code="401"}"#, 2.0),
        (r#"discomy_webhook_deliveries_total{forge="github",code="404"}"#, 1.0),
        (r#"discomy_webhook_deliveries_total{forge="github",code="400"}"#, 1.0),
        (r#"discomy_webhook_deliveries_total{forge="unknown",code="404"}"#, 1.0),
        (r#"discomy_webhook_deliveries_total{forge="github",code="202"}"#, 1.0),
        (r#"discomy_webhook_deliveries_total{forge="github",code="409"}"#, 1.0),
        (r#"discomy_webhook_deliveries_total{forge="github",code="422"}"#, 1.0),
        (r#"discomy_webhook_deliveries_total{forge="gitlab",code="401"}"#, 1.0),
        (r#"discomy_webhook_deliveries_total{forge="gitlab",code="202"}"#, 1.0),
        (r#"discomy_jobs{state="cancelled"}"#, 1.0),
        (r#"discomy_jobs{state="waiting"}"#, 1.0),
        (r#"discomy_jobs{state="succeeded"}"#, 0.0),
        ("discomy_queue_depth", 1.0),
    ] {
        assert_eq!(value(series), Some(want), "{series} in:\n{metrics}");
    }
    let sent = value(r#"discomy_ci_notifications_total{result="sent"}"#).unwrap_or(0.0);
    let failed = value(r#"discomy_ci_notifications_total{result="failed"}"#).unwrap_or(0.0);
    assert!(sent >= 2.0 && failed >= 1.0, "notifications sent {sent}, failed {failed}");
}
