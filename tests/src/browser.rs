//! A real browser for the web UI's tests: headless Chromium driven by `chromedriver` over the
//! W3C WebDriver HTTP protocol. [`Browser::start`] runs chromedriver on a free loopback port (a
//! [`Proc`]: killed with its process group on drop) and opens a session with a private profile;
//! dropping the [`Browser`] ends the session (Chromium quits) and then chromedriver.
//!
//! WebDriver's JSON goes over ureq to chromedriver on loopback. Screenshots go to
//! `target/test-artifacts/<test>/NAME.png`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::queue::free_port;
use crate::{Proc, START_TIMEOUT, clean_command, workspace_root};

/// Chromium, as Debian installs it (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Its driver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C name of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// A WebDriver session of headless Chromium.
pub struct Browser {
    port: u16,
    session: String,
    artefacts: PathBuf,
    driver: Proc,
}

/// Whether chromium and chromedriver are installed.
pub fn available() -> bool {
    Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; logs and the profile go to `dir`,
    /// screenshots to `target/test-artifacts/<test>/`.
    pub fn start(dir: &Path, test: &str) -> Result<Browser> {
        let port = free_port();
        let mut cmd = clean_command(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"));
        let mut driver = Proc::spawn("chromedriver", &mut cmd, dir);
        let start = Instant::now();
        loop {
            if let Some(status) = driver.try_wait() {
                bail!("chromedriver exited ({status}):\n{}", driver.logs(30));
            }
            if let Ok((200, v)) = request(port, "GET", "/status", None)
                && v["value"]["ready"] == true
            {
                break;
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("chromedriver did not become ready:\n{}", driver.logs(30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).context("create the Chromium profile directory")?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1024",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let (status, v) = request(port, "POST", "/session", Some(&caps))?;
        let session = v["value"]["sessionId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("new session: HTTP {status}: {v}\n{}", driver.logs(30)))?;
        let artefacts = workspace_root().join("target/test-artifacts").join(test);
        // Only this run's screenshots.
        let _ = std::fs::remove_dir_all(&artefacts);
        std::fs::create_dir_all(&artefacts).context("create the artefacts directory")?;
        Ok(Browser { port, session, artefacts, driver })
    }

    /// A command of the session: `value` of the answer, or the WebDriver error.
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("/session/{}{path}", self.session);
        let (status, v) = request(self.port, method, &url, body)?;
        if status != 200 {
            bail!("WebDriver {method} {path}: HTTP {status}: {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    /// Opens `url` (returns once the page has loaded).
    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(&json!({ "url": url }))).map(drop)
    }

    /// The current page's URL.
    pub fn url(&self) -> Result<String> {
        Ok(self.cmd("GET", "/url", None)?.as_str().unwrap_or("").to_owned())
    }

    /// The first element matching the CSS selector, if any.
    pub fn find(&self, css: &str) -> Result<Option<Element>> {
        let body = json!({"using": "css selector", "value": css});
        let url = format!("/session/{}/element", self.session);
        let (status, v) = request(self.port, "POST", &url, Some(&body))?;
        if status == 404 && v["value"]["error"] == "no such element" {
            return Ok(None);
        }
        if status != 200 {
            bail!("find {css:?}: HTTP {status}: {}", v["value"]);
        }
        let id = v["value"][ELEMENT_KEY].as_str().ok_or_else(|| anyhow!("find {css:?}: {v}"))?;
        Ok(Some(Element(id.to_owned())))
    }

    /// The element's rendered text.
    pub fn text(&self, el: &Element) -> Result<String> {
        Ok(self.cmd("GET", &format!("/element/{}/text", el.0), None)?.as_str().unwrap_or("").into())
    }

    /// Clicks the element.
    pub fn click(&self, el: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/click", el.0), Some(&json!({}))).map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns what it returns.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.cmd("POST", "/execute/sync", Some(&json!({"script": script, "args": args})))
    }

    /// Polls `probe` every 100 ms until it gives a value; fails after `limit`, saying `what`.
    pub fn wait_for<T>(
        &self,
        limit: Duration,
        what: &str,
        mut probe: impl FnMut(&Browser) -> Result<Option<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        loop {
            // A live update may replace an element between finding and reading it (a stale
            // element reference): that is "not yet", asked again until the limit.
            let last = match probe(self) {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => None,
                Err(e) => Some(e),
            };
            if start.elapsed() > limit {
                let _ = self.screenshot(&format!("timeout-{}", what.replace(' ', "-")));
                let url = self.url().unwrap_or_default();
                bail!("{what}: not within {limit:?} (url {url}; last error: {last:?})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a screenshot of the page as `NAME.png` among the test's artefacts; returns its path.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let data = self.cmd("GET", "/screenshot", None)?;
        let png = base64_decode(data.as_str().unwrap_or(""))?;
        let path = self.artefacts.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium quits with its session; chromedriver's group is killed by its Proc.
        let _ = request(self.port, "DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.try_wait();
    }
}

/// One exchange with chromedriver on loopback: status and JSON body (`Null` if none).
fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let sent = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        ("DELETE", _) => agent.delete(&url).call(),
        (_, body) => agent
            .post(&url)
            .header("Content-Type", "application/json; charset=utf-8")
            .send(body.map(Value::to_string).unwrap_or_else(|| "{}".into()).as_bytes()),
    };
    let mut resp = sent.with_context(|| format!("{method} {path}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .with_context(|| format!("{method} {path}: the answer"))?;
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON"))?
    };
    Ok((status, value))
}

/// Standard base64 (screenshots).
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("not base64: {:?}", char::from(c)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
