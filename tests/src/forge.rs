//! A forge's commit-status API on loopback, for the webhook tests: it records every request
//! (method, path, headers, JSON body) and answers `201 Created`, or `503` to the first request
//! when asked to play a forge that is down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request the fake API received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST`, …
    pub method: String,
    /// The path.
    pub path: String,
    /// Its headers, as sent.
    pub headers: Vec<(String, String)>,
    /// Its body as JSON (`Null` when it is not).
    pub body: serde_json::Value,
}

impl Received {
    /// A header's value, by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The fake API.
pub struct ForgeApi {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl ForgeApi {
    /// Starts it; with `down_first`, the first request gets 503.
    pub fn start(down_first: bool) -> ForgeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake forge API");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let Ok(clone) = stream.try_clone() else { continue };
                let mut reader = BufReader::new(clone);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("").to_owned();
                let mut headers = Vec::new();
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
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
                let _ = reader.read_exact(&mut body);
                let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                if let Ok(mut seen) = log.lock() {
                    seen.push(Received { method, path, headers, body });
                }
                let status =
                    if down_first && n == 0 { "503 Service Unavailable" } else { "201 Created" };
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                    )
                    .as_bytes(),
                );
            }
        });
        ForgeApi { url, seen }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until a request satisfies `pred` (panics after `within`); returns them all.
    pub fn wait(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.requests();
            if pred(&got) {
                return got;
            }
            assert!(start.elapsed() < within, "no {what} within {within:?}: {got:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
