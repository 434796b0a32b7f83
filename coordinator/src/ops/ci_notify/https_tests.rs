//! Commit statuses to a forge over https, for real: an in-process HTTPS "forge" on 127.0.0.1
//! under a CA of its own (rcgen through the farm's `Ca`, rustls with ring). Trusted through
//! `forge_ca_file`, it gets the status (path, headers, body as the forge documents them); without
//! its CA the post is refused with an error, never a panic. The system roots are tested in a
//! child process of this test binary with `SSL_CERT_FILE` set: the environment of this
//! multi-threaded process is never changed.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discomy_protocol::tls::{Ca, certs_from_pem};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::forge_tls::ForgeClient;
use super::tests::watch;
use super::{Forge, State, post, request};

/// A request the forge received: (method, path, headers, body).
type Seen = (String, String, Vec<(String, String)>, serde_json::Value);

/// An HTTPS forge on 127.0.0.1 with a certificate from a new CA: (its URL, the CA's PEM, what
/// it received). It answers every request `201 Created`.
fn https_forge() -> (String, String, Arc<Mutex<Vec<Seen>>>) {
    let (ca, _) = Ca::create("forge").unwrap();
    let names = ["127.0.0.1".to_owned()];
    let (issued, key_pem) =
        ca.issue_server_with_key("forge", &[], Duration::from_secs(3600), &names).unwrap();
    let chain = certs_from_pem(&issued.pem).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&config)) else { continue };
            let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
            // A client that refuses the certificate ends here, at the handshake.
            let mut line = String::new();
            if tls.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut words = line.split_whitespace().map(str::to_owned);
            let (method, path) =
                (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            let (mut headers, mut length) = (Vec::new(), 0usize);
            loop {
                let mut h = String::new();
                if tls.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
            let mut body = vec![0u8; length.min(1 << 20)];
            if tls.read_exact(&mut body).is_err() {
                continue;
            }
            let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            log.lock().unwrap().push((method, path, headers, body));
            let answer = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
            let mut tls = tls.into_inner();
            let _ = tls.write_all(answer.as_bytes());
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, ca.pem().to_owned(), seen)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[test]
fn a_forge_under_a_private_ca_gets_its_status_through_forge_ca_file() {
    let (url, ca_pem, seen) = https_forge();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("forge-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let github = request(&watch(Forge::Github), &url, "T", State::Success, "1 of 1 built");
    let gitlab = request(&watch(Forge::Gitlab), &url, "G", State::Failure, "failed: lua");

    // Without the forge's CA: refused at the handshake, an error for the retry, no panic.
    let err = post(&ForgeClient::new(Vec::new()), &github).unwrap_err();
    assert!(err.contains(&url) && err.contains("no root certificate"), "{err}");
    let err = post(&ForgeClient::for_ca_file(None).unwrap(), &github).unwrap_err();
    assert!(err.contains(&url) && err.to_lowercase().contains("certificate"), "{err}");
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the forge");

    // With it (besides the system roots): delivered, as each forge documents it.
    let client = ForgeClient::for_ca_file(Some(&ca_file)).unwrap();
    post(&client, &github).unwrap();
    post(&client, &gitlab).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (method, path, headers, body) = &seen[0];
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", &*format!("/repos/rpms/lua/statuses/{}", "a".repeat(40)))
    );
    assert_eq!(header(headers, "authorization"), Some("Bearer T"));
    assert_eq!(header(headers, "x-github-api-version"), Some("2022-11-28"));
    assert_eq!(
        (body["state"].as_str(), body["context"].as_str()),
        (Some("success"), Some("discomy/el9-x86_64"))
    );
    let (_, path, headers, body) = &seen[1];
    assert_eq!(path, &format!("/projects/42/statuses/{}", "a".repeat(40)));
    assert_eq!(header(headers, "private-token"), Some("G"));
    assert_eq!((body["state"].as_str(), body["ref"].as_str()), (Some("failed"), Some("c9s")));
}

/// The environment variables of the child below.
const CHILD_URL: &str = "DISCOMY_TEST_FORGE_URL";
const CHILD_EXPECT: &str = "DISCOMY_TEST_FORGE_EXPECT";

/// Runs only as the child of the test below (with its variables set): posts a status with the
/// system roots alone, `SSL_CERT_FILE` naming the forge's CA or another one.
#[test]
fn system_roots_child() {
    let Ok(url) = std::env::var(CHILD_URL) else { return };
    let req = request(&watch(Forge::Gitea), &url, "T", State::Pending, "0 of 1 built");
    let posted = post(&ForgeClient::for_ca_file(None).unwrap(), &req);
    match std::env::var(CHILD_EXPECT).as_deref() {
        Ok("delivered") => posted.unwrap(),
        _ => assert!(posted.unwrap_err().to_lowercase().contains("certificate")),
    }
}

#[test]
fn the_system_roots_are_trusted_and_honour_ssl_cert_file() {
    let (url, ca_pem, seen) = https_forge();
    let dir = tempfile::tempdir().unwrap();
    let (other, _) = Ca::create("other").unwrap();
    for (pem, expect, delivered) in [(other.pem(), "refused", 0), (&*ca_pem, "delivered", 1)] {
        let file = dir.path().join(format!("{expect}.pem"));
        std::fs::write(&file, pem).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "ops::ci_notify::https_tests::system_roots_child"])
            .args(["--test-threads=1", "--nocapture"])
            .env(CHILD_URL, &url)
            .env(CHILD_EXPECT, expect)
            .env("SSL_CERT_FILE", &file)
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && stdout.contains("1 passed"), "{expect}: {report}");
        assert_eq!(seen.lock().unwrap().len(), delivered, "{expect}: {report}");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].1, format!("/repos/rpms/lua/statuses/{}", "a".repeat(40)));
    assert_eq!(header(&seen[0].2, "authorization"), Some("token T"));
    assert_eq!(seen[0].3["state"], "pending");
}
