//! The coordinator's web UI (`/ui/`) in a real browser: headless Chromium driven by chromedriver,
//! against a real coordinator with its build queue and a real builder building in the test
//! chroot, all on loopback (a coordinator without a farm token: loopback clients need no login).
//!
//! 1. The queue page is open when a package is submitted: its row appears, then turns `running`,
//!    without a reload (live updates over Server-Sent Events); the farm page lists the build.
//! 2. The job page shows the log as it arrives: the spec's `%build` prints a line every half
//!    second, and lines that were not there when the page loaded appear in it.
//! 3. The page's Cancel button (a form with the session's CSRF token) cancels the job, as the
//!    JSON API then says; the same POST without the CSRF token, or with a wrong one, is refused
//!    (403).
//!
//! Latencies are measured in the page (a MutationObserver stamps when a row or a log line first
//! appears, `Date.now()`) against the coordinator's event times and the times the build printed
//! into its lines (same host, same clock), and printed.
//!
//! Without the chroot, root or Chromium the test is skipped with a message, unless `CI` is set:
//! then it fails.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use discomy_tests::browser::{self, Browser};
use discomy_tests::queue::{Builder, QueueCoordinator, chroot_prerequisites, discomy_json};
use serde_json::Value;

/// Queue timings short enough for a test (as `build_queue`).
const QUEUE: &str = discomy_tests::queue::FAST_QUEUE;

/// A package whose `%build` prints `tick N at NANOS` every half second for 40 s.
const TICKER_SPEC: &str = "Name: ticker\nVersion: 1.0\nRelease: 1\nSummary: x\nLicense: MIT\n\
BuildArch: noarch\n%description\nx\n%build\n\
for i in $(seq 1 80); do echo \"tick $i at $(date +%s%N)\"; sleep 0.5; done\n\
%install\nmkdir -p %{buildroot}/usr/share/ticker\necho ok >%{buildroot}/usr/share/ticker/ok\n\
%files\n/usr/share/ticker/ok\n";

const UI_WAIT: Duration = Duration::from_secs(60);

fn prerequisites() -> Option<PathBuf> {
    let found = chroot_prerequisites().and_then(|(root, _)| {
        if browser::available() {
            Ok(root)
        } else {
            Err(format!("{} or {} is missing", browser::CHROMIUM, browser::CHROMEDRIVER))
        }
    });
    discomy_tests::or_skip("web_ui", found)
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `GET /api/v1/jobs/ID` (the JSON API).
fn api_job(api: &str, id: u64) -> Value {
    let mut resp = http().get(format!("{api}/api/v1/jobs/{id}")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

/// `GET /api/v1/jobs/ID/log`: the current attempt's log.
fn api_log(api: &str, id: u64) -> String {
    let mut resp = http().get(format!("{api}/api/v1/jobs/{id}/log")).call().unwrap();
    resp.body_mut().read_to_string().unwrap_or_default()
}

/// When (Unix ms) the job's first event to `state` happened, per the coordinator.
fn event_ms(detail: &Value, state: &str) -> Option<f64> {
    let events = detail["events"].as_array()?;
    let e = events.iter().find(|e| e["to"] == state)?;
    Some(e["at"].as_f64()? * 1000.0)
}

/// Stamps, in the page, when each `tr#job-N` / `tr#run-N` row first shows each state, and when
/// each `tick N at NANOS` line first appears in `#log`.
const OBSERVE: &str = r#"
window.__loaded = window.__loaded || Date.now();
window.__seen = {};
window.__ticks = {};
function look() {
  document.querySelectorAll("tr[id^=job-], tr[id^=run-]").forEach(function (r) {
    var s = r.querySelector("span[class^=st-]");
    var key = r.id + ":" + (s ? s.textContent : "?");
    if (!(key in window.__seen)) { window.__seen[key] = Date.now(); }
  });
  var log = document.getElementById("log");
  if (log) {
    var re = /tick (\d+) at (\d+)/g, m;
    while ((m = re.exec(log.textContent)) !== null) {
      if (!(m[1] in window.__ticks)) { window.__ticks[m[1]] = [Number(m[2]) / 1e6, Date.now()]; }
    }
  }
}
look();
new MutationObserver(look).observe(document.body, { subtree: true, childList: true, characterData: true });
return window.__loaded;
"#;

fn observed(b: &Browser) -> Value {
    b.execute("return {loaded: window.__loaded, seen: window.__seen, ticks: window.__ticks};", &[])
        .unwrap()
}

#[test]
fn the_web_ui_shows_a_build_live_streams_its_log_and_cancels_it() {
    let Some(root) = prerequisites() else { return };
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let coordinator = QueueCoordinator::start(dir, QUEUE);
    let api = coordinator.api.clone();
    let browser = Browser::start(dir, "web_ui").unwrap();
    let b = &browser;

    // 1. The queue page, open before the job exists.
    b.goto(&format!("{}/", api.url)).unwrap();
    assert!(b.url().unwrap().ends_with("/ui/"), "/ redirects to the farm page");
    b.wait_for(UI_WAIT, "farm page", |b| b.find("#nodes")).unwrap();
    b.goto(&format!("{}/ui/queue", api.url)).unwrap();
    b.wait_for(UI_WAIT, "queue page", |b| b.find("#active")).unwrap();
    let loaded = b.execute(OBSERVE, &[]).unwrap();
    // The live stream is connected before the job is submitted.
    b.wait_for(UI_WAIT, "live stream", |b| {
        let status = b.find("#live-status")?.map(|el| b.text(&el)).transpose()?;
        Ok((status.as_deref() == Some("live")).then_some(()))
    })
    .unwrap();

    let pkg = dir.join("packages/ticker");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(pkg.join("ticker.spec"), TICKER_SPEC).unwrap();
    let (ok, json, err) = discomy_json(
        &api,
        &["submit", "--chroot", "el9", "--json", "--submitter", "web-ui", "--package"]
            .into_iter()
            .chain([pkg.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert!(ok, "discomy submit: {err}");
    let id = json["ids"][0].as_u64().unwrap();
    eprintln!("[e2e] job {id} submitted at {:.1?}", t0.elapsed());
    let _builder = Builder::start(dir, "builder1", &api, &root, None, None);

    let row = format!("job-{id}");
    let seen = b
        .wait_for(UI_WAIT, "the job's row turns running", |b| {
            let o = observed(b);
            let running = o["seen"].get(format!("{row}:running")).is_some();
            Ok(running.then_some(o))
        })
        .unwrap();
    assert_eq!(seen["loaded"], loaded, "the queue page was not reloaded: {seen}");
    b.screenshot("1-queue-running").unwrap();
    let detail = api_job(&api.url, id);
    let mut latencies = Vec::new();
    for state in ["waiting", "scheduled", "running"] {
        let at = event_ms(&detail, state).unwrap();
        if let Some(shown) = seen["seen"][format!("{row}:{state}")].as_f64() {
            latencies.push(format!("{state}: {:.0} ms", shown - at));
        }
    }
    eprintln!("[e2e] queue page: job event → row in the DOM: {}", latencies.join(", "));

    // The farm page lists the build on its builder.
    b.goto(&format!("{}/ui/", api.url)).unwrap();
    // (Read in one probe: a live update may replace the row between finding and reading it.)
    let text = b
        .wait_for(UI_WAIT, "the build on the farm page", |b| {
            b.find(&format!("#run-{id}"))?.map(|el| b.text(&el)).transpose()
        })
        .unwrap();
    assert!(text.contains("builder1") && text.contains("ticker"), "{text}");
    b.screenshot("2-farm").unwrap();

    // 2. The job page: log lines arrive while it is open (opened once some are there).
    let start = Instant::now();
    while !api_log(&api.url, id).contains("tick 2 at") {
        assert!(start.elapsed() < UI_WAIT, "no tick in the log: {}", api_log(&api.url, id));
        std::thread::sleep(Duration::from_millis(100));
    }
    b.goto(&format!("{}/ui/jobs/{id}", api.url)).unwrap();
    let log = b.wait_for(UI_WAIT, "job page", |b| b.find("#log")).unwrap();
    let first = b.text(&log).unwrap();
    let loaded = b.execute(OBSERVE, &[]).unwrap();
    let first_max = first
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.split(' ').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let ticks = b
        .wait_for(UI_WAIT, "new log lines", |b| {
            let o = observed(b);
            let fresh = o["ticks"].as_object().map_or(0, |t| {
                t.keys().filter_map(|k| k.parse::<u64>().ok()).filter(|&n| n > first_max).count()
            });
            Ok((fresh >= 3).then_some(o))
        })
        .unwrap();
    assert_eq!(ticks["loaded"], loaded, "the job page was not reloaded");
    let now_text = b.text(&log).unwrap();
    assert!(first_max >= 2, "the page showed the log so far at load: {first}");
    let new_line = format!("tick {} at", first_max + 1);
    assert!(!first.contains(&new_line) && now_text.contains(&new_line), "{now_text}");
    let mut lags: Vec<f64> = ticks["ticks"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.parse::<u64>().is_ok_and(|n| n > first_max))
        .map(|(_, v)| v[1].as_f64().unwrap() - v[0].as_f64().unwrap())
        .collect();
    lags.sort_by(f64::total_cmp);
    eprintln!(
        "[e2e] job page: {} line(s) at load, new lines printed → in the DOM: {:.0?} ms",
        first.lines().count(),
        lags
    );
    b.screenshot("3-job-log").unwrap();

    // 3. Cancel from the page.
    let cancel = b.find("#cancel").unwrap().expect("a Cancel button for a running job");
    b.click(&cancel).unwrap();
    b.wait_for(UI_WAIT, "the job page says cancelled", |b| {
        let state = b.find("#job-state")?.map(|el| b.text(&el)).transpose()?;
        Ok((state.as_deref() == Some("cancelled")).then_some(()))
    })
    .unwrap();
    b.screenshot("4-job-cancelled").unwrap();
    let detail = api_job(&api.url, id);
    assert_eq!(detail["job"]["state"], "cancelled", "{detail:#}");
    let by_ui =
        detail["events"].as_array().unwrap().iter().any(|e| {
            e["to"] == "cancelled" && e["detail"].as_str().unwrap_or("").contains("web UI")
        });
    assert!(by_ui, "{detail:#}");

    // A POST without the CSRF token (with or without a session), or with a wrong one: 403.
    let agent = http();
    let retry = format!("{}/ui/jobs/{id}/retry", api.url);
    let status = agent.post(&retry).send_empty().unwrap().status().as_u16();
    assert_eq!(status, 403, "no session, no CSRF token");
    let page = agent.get(format!("{}/ui/queue", api.url)).call().unwrap();
    let cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    for body in ["", "csrf=", &format!("csrf={}", "0".repeat(64))] {
        let status = agent
            .post(&retry)
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body)
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 403, "session, body {body:?}");
    }
    assert_eq!(api_job(&api.url, id)["job"]["state"], "cancelled", "nothing was retried");
    let js = agent.get(format!("{}/ui/wuimy.js", api.url)).call().unwrap();
    assert_eq!(js.status().as_u16(), 200);
    drop(browser);
    eprintln!("[e2e] web_ui: {:.1?} wall time", t0.elapsed());
}

/// With a farm token: pages redirect to the login form, a wrong token is refused, the right one
/// opens an `HttpOnly; SameSite=Strict` session whose pages, stream and actions work (with its
/// CSRF token); logging out ends it. No browser needed: plain HTTP.
#[test]
fn with_a_farm_token_the_web_ui_needs_a_login() {
    const TOKEN: &str = "web-ui-token+/=";
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = QueueCoordinator::start_on(tmp.path(), "127.0.0.1", Some(TOKEN), QUEUE);
    let url = coordinator.api.url.clone();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let resp = agent.get(format!("{url}/ui/queue")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 303, "a page without a session");
    assert_eq!(resp.headers().get("location").unwrap(), "/ui/login");
    let stream = agent.get(format!("{url}/ui/live/overview?view=queue")).call().unwrap();
    assert_eq!(stream.status().as_u16(), 401, "a live stream without a session");
    let login = |token: &str| {
        let body =
            format!("token={}", token.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D"));
        agent
            .post(format!("{url}/ui/login"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_str())
            .unwrap()
    };
    assert_eq!(login("wrong").status().as_u16(), 401);
    let resp = login(TOKEN);
    assert_eq!(resp.status().as_u16(), 303);
    let set_cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let mut page = agent.get(format!("{url}/ui/queue")).header("Cookie", &cookie).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.body_mut().read_to_string().unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the logout form carries the CSRF token")
        .to_owned();
    let logout = |csrf: &str| {
        agent
            .post(format!("{url}/ui/logout"))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(format!("csrf={csrf}").as_str())
            .unwrap()
            .status()
            .as_u16()
    };
    // Re-prioritise a waiting job (no builder here: it stays waiting) from its page, and from
    // `discomy jobs priority`; a POST without the CSRF token, or out of range, changes nothing.
    let pkg = tmp.path().join("tiny");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("tiny.spec"),
        "Name: tiny\nVersion: 1\nRelease: 1\nSummary: x\nLicense: MIT\n%description\nx\n%files\n",
    )
    .unwrap();
    let api = &coordinator.api;
    let pkg_arg = pkg.to_str().unwrap();
    let (ok, json, err) =
        discomy_json(api, &["submit", "--chroot", "el9", "--json", "--package", pkg_arg]);
    assert!(ok, "discomy submit: {err}");
    let id = json["ids"][0].as_u64().unwrap();
    let set = |csrf: Option<&str>, priority: &str| {
        let body = match csrf {
            Some(c) => format!("csrf={c}&priority={priority}"),
            None => format!("priority={priority}"),
        };
        agent
            .post(format!("{url}/ui/jobs/{id}/priority"))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_str())
            .unwrap()
            .status()
            .as_u16()
    };
    let priority_of = || {
        let (ok, d, err) = discomy_json(api, &["jobs", "show", &id.to_string(), "--json"]);
        assert!(ok, "{err}");
        d["job"]["priority"].as_i64().unwrap()
    };
    let mut job_page =
        agent.get(format!("{url}/ui/jobs/{id}")).header("Cookie", &cookie).call().unwrap();
    let job_html = job_page.body_mut().read_to_string().unwrap();
    assert!(job_html.contains("id=\"priority\""), "a waiting job's page offers a priority");
    assert_eq!(set(None, "9"), 403, "no CSRF token");
    assert_eq!(set(Some(&csrf), "5000"), 400, "out of range");
    assert_eq!(priority_of(), 0);
    assert_eq!(set(Some(&csrf), "7"), 303);
    assert_eq!(priority_of(), 7);
    let out =
        discomy_tests::queue::discomy_command(api, &["jobs", "priority", &id.to_string(), "-3"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(priority_of(), -3);

    assert_eq!(logout(&"f".repeat(64)), 403, "a wrong CSRF token");
    assert_eq!(logout(&csrf), 303);
    let resp = agent.get(format!("{url}/ui/queue")).header("Cookie", &cookie).call().unwrap();
    assert_eq!(resp.status().as_u16(), 303, "the session ended with the logout");
}
