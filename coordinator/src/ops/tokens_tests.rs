//! Tenant tokens: the store on SQLite and PostgreSQL (hashed, listed, revoked, bounded, a use
//! recorded at most once a minute), and the API and the web UI served in-process on loopback
//! over a real SQLite file: what each scope may do, revocation and expiry at once, the farm token
//! unchanged, no secret on disk.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use discomy_protocol::ops::{
    BlobRef, JobSource, SubmitRequest, Target, TokenCreated, TokenInfo, TokenScope,
};
use tokio_util::sync::CancellationToken;

use super::db::Db;
use super::pg::PgStore;
use super::store::QueueStore;
use super::tests::pg_database;
use super::tokens::{Caller, Refusal, TokenStore, check};
use super::{Ops, OpsConfig};

#[test]
fn tokens_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("q.sqlite3")).unwrap();
    tokens_in_the_store(db.tokens());
}

#[test]
fn tokens_in_postgres() {
    let Some(database) = pg_database("tokens") else { return };
    let mut pg = PgStore::connect(&database, None).unwrap();
    tokens_in_the_store(pg.tokens());
}

#[test]
fn live_tokens_are_bounded() {
    let mut db = Db::in_memory().unwrap();
    let tx = db.conn.transaction().unwrap();
    for i in 0..discomy_protocol::ops::MAX_LIVE_TOKENS - 1 {
        tx.execute(
            "INSERT INTO tokens (name, scopes, secret_blake3, created_at) VALUES (?1, 'submit', ?2, 1)",
            rusqlite::params![format!("t{i}"), blake3::hash(b"x").to_hex().as_str()],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let (hash, submit) = (blake3::hash(b"y"), [TokenScope::Submit]);
    let last = db.tokens().token_create("last", &submit, &hash, 10.0, Some(20.0)).unwrap();
    let refused = db.tokens().token_create("one-too-many", &submit, &hash, 10.0, None);
    assert!(matches!(refused, Err(super::OpsError::Conflict(_))), "{refused:?}");
    // Expired or revoked tokens leave room.
    db.tokens().token_create("after", &submit, &hash, 21.0, None).unwrap();
    db.tokens().token_revoke(last.id - 1, 22.0).unwrap();
    db.tokens().token_create("again", &submit, &hash, 22.0, None).unwrap();
    assert!(db.tokens().token_create("full", &submit, &hash, 22.0, None).is_err());
}

fn tokens_in_the_store(store: &mut dyn TokenStore) {
    let hash = blake3::hash(b"s3cret");
    let submit = [TokenScope::Submit];
    let a = store.token_create("ci-lua", &submit, &hash, 100.0, None).unwrap();
    let b = store.token_create("alice", &[TokenScope::Admin], &hash, 100.0, Some(200.0)).unwrap();
    assert_ne!(a.id, b.id);
    let row = store.token_get(a.id).unwrap().unwrap();
    assert_eq!((row.info.clone(), row.hash), (a.clone(), hash));
    assert!(store.token_get(9999).unwrap().is_none());
    // Checked: the right secret, used at 110 (recorded), again at 130 (not: within a minute).
    let ci = Caller::Tenant { id: a.id, name: "ci-lua".into(), scopes: submit.to_vec() };
    assert_eq!(check(store, a.id, "s3cret", 110.0).unwrap(), Ok(ci));
    assert_eq!(check(store, a.id, "s3cret", 130.0).unwrap().map(|_| ()), Ok(()));
    assert_eq!(store.token_get(a.id).unwrap().unwrap().info.last_used_at, Some(110.0));
    check(store, a.id, "s3cret", 171.0).unwrap().unwrap();
    assert_eq!(store.token_get(a.id).unwrap().unwrap().info.last_used_at, Some(171.0));
    assert_eq!(check(store, a.id, "wrong", 110.0).unwrap(), Err(Refusal::UnknownOrRevoked));
    assert_eq!(check(store, 9999, "s3cret", 110.0).unwrap(), Err(Refusal::UnknownOrRevoked));
    assert_eq!(check(store, b.id, "s3cret", 250.0).unwrap(), Err(Refusal::Expired));
    // Revoked: refused at once, listed as revoked, revoking again changes nothing.
    let revoked = store.token_revoke(a.id, 300.0).unwrap();
    assert_eq!(revoked.revoked_at, Some(300.0));
    assert_eq!(check(store, a.id, "s3cret", 301.0).unwrap(), Err(Refusal::UnknownOrRevoked));
    assert_eq!(store.token_revoke(a.id, 400.0).unwrap().revoked_at, Some(300.0));
    assert!(store.token_revoke(9999, 400.0).is_err());
    let names: Vec<String> = store.token_list().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["ci-lua", "alice"]);
}

/// One HTTP call: its status and body.
pub(crate) fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, String) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let bearer = token.map(|t| format!("Bearer {t}"));
    let resp = match (method, body) {
        ("GET", _) => {
            let req = agent.get(url);
            match &bearer {
                Some(b) => req.header("Authorization", b).call(),
                None => req.call(),
            }
        }
        ("DELETE", _) => {
            let req = agent.delete(url);
            match &bearer {
                Some(b) => req.header("Authorization", b).call(),
                None => req.call(),
            }
        }
        (m, body) => {
            let req = if m == "PUT" { agent.put(url) } else { agent.post(url) };
            let req = req.header("Content-Type", "application/json");
            let req = match &bearer {
                Some(b) => req.header("Authorization", b),
                None => req,
            };
            req.send(body.unwrap_or(b"{}"))
        }
    };
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

pub(crate) fn create(
    api: &str,
    by: &str,
    name: &str,
    scopes: &str,
    ttl: Option<u64>,
) -> TokenCreated {
    let scopes = TokenScope::parse_list(scopes).unwrap();
    let body = serde_json::json!({ "name": name, "scopes": scopes, "ttl_secs": ttl });
    let (status, text) =
        call("POST", &format!("{api}/tokens"), Some(by), Some(body.to_string().as_bytes()));
    assert_eq!(status, 201, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_revocation_and_expiry_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = OpsConfig { state_dir: dir.path().to_path_buf(), ..Default::default() };
    let ops: Arc<Ops> = Ops::open(config, Some("farm-secret")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/api/v1", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let auth = discomy_protocol::AuthConfig::from_option(Some("farm-secret"));
    let farm = crate::server::FarmHandle::new(crate::server::CoordinatorConfig::new("t", auth));
    let ui = crate::wuimy::router(Arc::clone(&ops), farm, shutdown.clone()).unwrap();
    let server = tokio::spawn(super::serve(listener, ops, ui, shutdown.clone()));
    let state_dir = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let job = the_api_by_scope(&api, &state_dir);
        the_web_ui_by_scope(&api, job);
    })
    .await
    .unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Returns a waiting job's id.
fn the_api_by_scope(api: &str, state_dir: &std::path::Path) -> u64 {
    let farm = "farm-secret";
    let admin = create(api, farm, "ops", "admin", None);
    let ci = create(api, &admin.token, "ci-lua", "submit", None);
    let brief = create(api, &admin.token, "brief", "submit", Some(1));
    assert!(ci.token.starts_with(&format!("dsc_{}_", ci.info.id)));
    // The submit token uploads a source, submits, reads; it may not cancel, manage tokens, or
    // use builders' endpoints.
    let src = b"Name: lua\n";
    let hex = blake3::hash(src).to_hex().to_string();
    let blob_url = format!("{api}/blobs/{hex}?size={}", src.len());
    assert_eq!(call("PUT", &blob_url, Some(&ci.token), Some(src)).0, 201);
    let srpm = BlobRef { name: "lua-5.4-1.src.rpm".into(), blake3: hex, size: src.len() as u64 };
    let req = SubmitRequest {
        source: JobSource::Srpm { srpm },
        target: Target { chroot: "rocky-9".into(), arch: "x86_64".into() },
        priority: 0,
        batch: None,
        submitter: "ci-lua".into(),
        timeout_secs: None,
        requires: Vec::new(),
        provides: Vec::new(),
    };
    let body = serde_json::to_vec(&req).unwrap();
    let (status, text) = call("POST", &format!("{api}/jobs"), Some(&ci.token), Some(&body));
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"].as_u64().unwrap();
    assert_eq!(call("GET", &format!("{api}/jobs/{id}"), Some(&ci.token), None).0, 200);
    assert_eq!(call("GET", &format!("{api}/jobs"), Some(&ci.token), None).0, 200);
    let cancel = format!("{api}/jobs/{id}/cancel");
    let (status, text) = call("POST", &cancel, Some(&ci.token), None);
    assert_eq!((status, text.contains("admin scope")), (403, true), "{text}");
    assert_eq!(call("POST", &format!("{api}/tokens"), Some(&ci.token), None).0, 403);
    assert_eq!(call("GET", &format!("{api}/tokens"), Some(&ci.token), None).0, 403);
    let (status, text) = call("POST", &format!("{api}/builders/report"), Some(&ci.token), None);
    assert_eq!((status, text.contains("farm token only")), (403, true), "{text}");
    // The admin token cancels, lists (no secret, no hash), and revokes: refused at once.
    assert_eq!(call("POST", &cancel, Some(&admin.token), None).0, 200);
    let (status, list) = call("GET", &format!("{api}/tokens"), Some(&admin.token), None);
    assert_eq!(status, 200);
    let secret = |t: &TokenCreated| t.token.rsplit('_').next().unwrap().to_owned();
    let hash = |t: &TokenCreated| blake3::hash(secret(t).as_bytes()).to_hex().to_string();
    for t in [&admin, &ci, &brief] {
        assert!(!list.contains(&secret(t)) && !list.contains(&hash(t)), "{list}");
    }
    let listed: Vec<TokenInfo> = serde_json::from_str(&list).unwrap();
    let used = listed.iter().find(|t| t.id == ci.info.id).unwrap();
    assert!(used.last_used_at.is_some() && used.revoked_at.is_none());
    let (status, _) =
        call("DELETE", &format!("{api}/tokens/{}", ci.info.id), Some(&admin.token), None);
    assert_eq!(status, 200);
    let (status, text) = call("GET", &format!("{api}/jobs"), Some(&ci.token), None);
    assert_eq!((status, text.contains("unknown or revoked")), (401, true), "{text}");
    // Unknown ids and wrong secrets say the same; an expired token says so.
    let unknown = format!("dsc_999_{}", "0".repeat(32));
    let wrong = format!("dsc_{}_{}", admin.info.id, "0".repeat(32));
    for t in [unknown.as_str(), wrong.as_str()] {
        let (status, text) = call("GET", &format!("{api}/jobs"), Some(t), None);
        assert_eq!((status, text.contains("unknown or revoked")), (401, true), "{text}");
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (status, text) = call("GET", &format!("{api}/jobs"), Some(&brief.token), None);
    assert_eq!((status, text.contains("expired")), (401, true), "{text}");
    // The farm token still does everything; no token, nothing.
    assert_eq!(call("POST", &format!("{api}/jobs/{id}/retry"), Some(farm), None).0, 200);
    assert_eq!(call("GET", &format!("{api}/jobs"), None, None).0, 401);
    assert_eq!(call("GET", &format!("{api}/jobs"), Some("farm-wrong"), None).0, 401);
    // On disk: the hashes, never the secrets (the database file and its write-ahead log).
    let mut bytes = Vec::new();
    for name in ["queue.sqlite3", "queue.sqlite3-wal"] {
        bytes.extend(std::fs::read(state_dir.join(name)).unwrap_or_default());
    }
    let on_disk = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    for t in [&admin, &ci, &brief] {
        assert!(on_disk(&hash(t)), "the hash of {} is not where the test looks", t.info.name);
        assert!(!on_disk(&secret(t)), "the secret of {} is on disk", t.info.name);
    }
    id
}

/// One web UI call without following redirects: status, cookie set, body.
pub(crate) fn ui_call(
    url: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (u16, String, String) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let resp = match form {
        None => {
            let req = agent.get(url);
            match cookie {
                Some(c) => req.header("Cookie", c).call(),
                None => req.call(),
            }
        }
        Some(form) => {
            let req = agent.post(url).header("Content-Type", "application/x-www-form-urlencoded");
            match cookie {
                Some(c) => req.header("Cookie", c).send(form),
                None => req.send(form),
            }
        }
    };
    let mut resp = resp.unwrap();
    let set = resp.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
    let set = set.split(';').next().unwrap_or("").to_owned();
    (resp.status().as_u16(), set, resp.body_mut().read_to_string().unwrap_or_default())
}

/// The web UI's login takes tenant tokens: a submit token's session reads but may not act, an
/// admin token's acts; revoking a token ends its sessions.
fn the_web_ui_by_scope(api: &str, job: u64) {
    let ui = api.trim_end_matches("/api/v1").to_owned() + "/ui";
    let viewer = create(api, "farm-secret", "viewer", "submit", None);
    let boss = create(api, "farm-secret", "boss", "admin", None);
    let login =
        |token: &str| ui_call(&format!("{ui}/login"), None, Some(&format!("token={token}")));
    assert_eq!(login(&format!("dsc_{}_{}", boss.info.id, "0".repeat(32))).0, 401);
    let session = |t: &TokenCreated| {
        let (status, cookie, _) = login(&t.token);
        assert_eq!(status, 303);
        let (status, _, html) = ui_call(&format!("{ui}/jobs/{job}"), Some(&cookie), None);
        assert_eq!(status, 200);
        let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap();
        (cookie, csrf.split('"').next().unwrap().to_owned())
    };
    let act = |(cookie, csrf): &(String, String)| {
        let form = format!("csrf={csrf}&priority=4");
        ui_call(&format!("{ui}/jobs/{job}/priority"), Some(cookie), Some(&form)).0
    };
    let (v, b) = (session(&viewer), session(&boss));
    assert_eq!(act(&v), 403, "a submit token's session may not act");
    assert_eq!(act(&b), 303, "an admin token's session acts");
    let revoke = format!("{api}/tokens/{}", boss.info.id);
    assert_eq!(call("DELETE", &revoke, Some("farm-secret"), None).0, 200);
    assert_eq!(act(&b), 401, "revoked: its session is gone");
    let (status, _, _) = ui_call(&format!("{ui}/queue"), Some(&b.0), None);
    assert_eq!(status, 303, "revoked: back to the login form");
    assert_eq!(login(&boss.token).0, 401);
}
