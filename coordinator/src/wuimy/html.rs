//! HTML building blocks of the web UI: escaping (everything interpolated into a page goes
//! through [`esc`] or [`attr`]), the page layout with its navigation and security headers, the
//! small script that applies live updates, and formatting of sizes, times and states.

use std::fmt::Write as _;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use discomy_protocol::ops::JobState;

/// `text` escaped for an HTML text node or a double-quoted attribute.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Same as [`esc`]; says at the call site that the value goes into an attribute.
pub fn attr(text: &str) -> String {
    esc(text)
}

/// Which tab of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// The farm.
    Farm,
    /// The build queue and its jobs.
    Queue,
    /// Published repositories.
    Repos,
    /// The working fleet: join requests and nodes.
    Fleet,
    /// No tab (login, errors).
    None,
}

/// What the layout needs besides the page's body.
pub struct Page<'a> {
    /// The `<title>` and `<h1>`.
    pub title: &'a str,
    /// The highlighted tab.
    pub tab: Tab,
    /// The live stream the page follows (`data-live`), if any.
    pub live: Option<String>,
    /// The session's CSRF token, for the logout form; `None`: no session (login page).
    pub csrf: Option<&'a str>,
    /// Whether the logout button makes sense (a login session, not a loopback one).
    pub logged_in: bool,
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
header{background:#234;color:#fff;padding:6px 16px;display:flex;gap:18px;align-items:center}\
header a{color:#cde;text-decoration:none}header a.on{color:#fff;font-weight:bold}\
header form{margin-left:auto}main{padding:8px 16px}\
table{border-collapse:collapse;margin:6px 0 16px}th,td{border:1px solid #ccc;padding:3px 8px;\
text-align:left;vertical-align:top}th{background:#eef}\
.st-running,.st-scheduled{color:#06c;font-weight:bold}.st-succeeded{color:#080}\
.st-failed{color:#c00;font-weight:bold}.st-cancelled{color:#888}.st-waiting{color:#a60}\
pre#log{background:#111;color:#ddd;padding:8px;max-height:60vh;overflow:auto;white-space:pre-wrap}\
.muted{color:#777}.err{color:#c00}#live-status{font-size:12px;color:#9ab}\
form.inline{display:inline}button{cursor:pointer}";

/// The script every page loads (`/ui/wuimy.js`): follows the page's `data-live` stream.
/// `html` events replace the inner HTML of the element they name (fragments rendered and
/// escaped by the server); `log` events append text to `#log`; `reload` reloads the page.
pub const SCRIPT: &str = r#""use strict";
(function () {
  var src = document.body.getAttribute("data-live");
  var status = document.getElementById("live-status");
  window.wuimyUpdates = [];
  if (!src || !window.EventSource) { return; }
  var es = new EventSource(src);
  es.onopen = function () { if (status) { status.textContent = "live"; } };
  es.onerror = function () { if (status) { status.textContent = "reconnecting…"; } };
  es.addEventListener("html", function (e) {
    var m = JSON.parse(e.data);
    var el = document.getElementById(m.id);
    if (el) { el.innerHTML = m.html; }
    window.wuimyUpdates.push({ id: m.id, at: Date.now() });
  });
  es.addEventListener("log", function (e) {
    var m = JSON.parse(e.data);
    var el = document.getElementById("log");
    if (!el) { return; }
    var follow = el.scrollTop + el.clientHeight >= el.scrollHeight - 20;
    el.appendChild(document.createTextNode(m.text));
    el.setAttribute("data-offset", String(m.offset));
    if (follow) { el.scrollTop = el.scrollHeight; }
    window.wuimyUpdates.push({ id: "log", at: Date.now() });
  });
  es.addEventListener("reload", function () { es.close(); window.location.reload(); });
})();
"#;

/// A whole page around `body`.
pub fn page(p: &Page<'_>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} — discomy</title><style>{STYLE}</style></head>",
        esc(p.title)
    );
    match &p.live {
        Some(live) => {
            let _ = write!(out, "<body data-live=\"{}\">", attr(live));
        }
        None => out.push_str("<body>"),
    }
    out.push_str("<header><strong>discomy</strong>");
    for (tab, href, name) in [
        (Tab::Farm, "/ui/", "Farm"),
        (Tab::Queue, "/ui/queue", "Queue"),
        (Tab::Repos, "/ui/repos", "Repositories"),
        (Tab::Fleet, "/ui/fleet", "Fleet"),
    ] {
        let on = if tab == p.tab { " class=\"on\"" } else { "" };
        let _ = write!(out, "<a href=\"{href}\"{on}>{name}</a>");
    }
    if p.live.is_some() {
        out.push_str("<span id=\"live-status\">connecting…</span>");
    }
    if let (Some(csrf), true) = (p.csrf, p.logged_in) {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/ui/logout\"><input type=\"hidden\" name=\"csrf\" \
             value=\"{}\"><button>Log out</button></form>",
            attr(csrf)
        );
    }
    let _ = write!(out, "</header><main><h1>{}</h1>{body}</main>", esc(p.title));
    out.push_str("<script src=\"/ui/wuimy.js\"></script></body></html>");
    out
}

/// An HTML response with the UI's security headers (no framing, no sniffing, no caching, a
/// content security policy allowing only this origin's script).
pub fn respond(status: StatusCode, html: String) -> Response {
    let mut resp = (status, html).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    secure_headers(headers);
    resp
}

/// The security headers every UI response carries.
pub fn secure_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; \
             style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A state as a coloured word.
pub fn state(s: JobState) -> String {
    format!("<span class=\"st-{0}\">{0}</span>", s.as_str())
}

/// Bytes as B, KiB, MiB, GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A duration in seconds as `1h02m`, `3m05s`, `12s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

/// How long ago Unix time `at` was, from `now`.
pub fn ago(at: f64, now: f64) -> String {
    if at <= 0.0 { "—".to_owned() } else { format!("{} ago", duration(now - at)) }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(at: f64) -> String {
    let secs = at.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, (rem / 60) % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000.0), "2023-11-14 22:13:20");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(3725.0), "1h02m");
    }
}
