//! The parts of pages that change: rendered once into the page and again by the live streams,
//! which send them whole when they differ from what was sent last. Pure functions of the farm's
//! status, the queue's jobs and events; every value is escaped here.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use discomy_protocol::coordinator::FarmStatus;
use discomy_protocol::ops::{JobEvent, JobState, JobView, percent_encode};

use super::html::{ago, attr, bytes, duration, esc, state, utc};

/// How many ended jobs the queue page lists.
pub const RECENT: usize = 50;

fn job_link(id: u64) -> String {
    format!("<a href=\"/ui/jobs/{id}\">#{id}</a>")
}

/// The farm: its nodes (slots, load, speed, units placed), submitters, and the package builds
/// running on builders now.
pub fn farm(status: &FarmStatus, jobs: &[JobView], now: f64) -> String {
    let mut out = String::new();
    let slots: u32 = status.nodes.iter().map(|n| n.slots).sum();
    let assigned: u32 = status.nodes.iter().map(|n| n.assigned).sum();
    let _ = write!(
        out,
        "<p>Farm <strong>{}</strong>: {} node(s), {slots} slot(s), {assigned} unit(s) placed, \
         {} unit(s) waiting; {} hedged, {} node(s) lost since start.</p>",
        esc(&status.farm),
        status.nodes.len(),
        status.queued,
        status.hedged,
        status.nodes_lost
    );
    out.push_str(
        "<h2>Nodes</h2><table id=\"nodes\"><tr><th>Node</th><th>Address</th><th>Slots</th>\
         <th>Cores</th><th>Units placed</th><th>Compiling</th><th>Foreign load</th>\
         <th>Free memory</th><th>Free disk</th><th>Speed (wall)</th><th>Speed (CPU)</th>\
         <th>Placed / done</th></tr>",
    );
    if status.nodes.is_empty() {
        out.push_str("<tr><td colspan=\"12\" class=\"muted\">no node in the farm</td></tr>");
    }
    for n in &status.nodes {
        let _ = write!(
            out,
            "<tr id=\"node-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.0}%</td><td>{}</td><td>{}</td><td>{}/s</td><td>{}/s</td><td>{} / {}</td></tr>",
            n.id,
            esc(&n.host),
            esc(&n.address),
            n.slots,
            n.cores,
            n.assigned,
            n.load.running,
            f64::from(n.load.foreign_load) / 10.0,
            bytes(n.load.free_mem_mb.saturating_mul(1 << 20)),
            bytes(n.load.free_disk_mb.saturating_mul(1 << 20)),
            bytes(n.speed_wall_bps as u64),
            bytes(n.speed_cpu_bps as u64),
            n.placed_total,
            n.done_total
        );
    }
    out.push_str(
        "</table><p class=\"muted\">Toolchains per node: not reported (nodes do not send their \
         toolchains to the coordinator).</p>",
    );
    out.push_str("<h2>Submitters</h2><table id=\"submitters\"><tr><th>Host</th><th>Units placed</th><th>Units waiting</th></tr>");
    if status.submitters.is_empty() {
        out.push_str(
            "<tr><td colspan=\"3\" class=\"muted\">nobody compiles on the farm now</td></tr>",
        );
    }
    for s in &status.submitters {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.host),
            s.running,
            s.queued
        );
    }
    out.push_str(
        "</table><h2>Package builds on builders</h2><table id=\"builds\"><tr><th>Job</th>\
         <th>Package</th><th>State</th><th>Builder</th><th>Target</th><th>Attempt</th>\
         <th>Since</th></tr>",
    );
    let mut live: Vec<&JobView> = jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Scheduled | JobState::Running))
        .collect();
    live.sort_by_key(|j| j.id);
    if live.is_empty() {
        out.push_str("<tr><td colspan=\"7\" class=\"muted\">no package build runs</td></tr>");
    }
    for j in live {
        let _ = write!(
            out,
            "<tr id=\"run-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}-{}</td>\
             <td>{}</td><td>{}</td></tr>",
            j.id,
            job_link(j.id),
            esc(&j.name),
            state(j.state),
            esc(j.builder.as_deref().unwrap_or("")),
            esc(&j.target.chroot),
            esc(&j.target.arch),
            j.attempt,
            ago(j.updated_at, now)
        );
    }
    out.push_str("</table>");
    if !status.quarantined.is_empty() {
        out.push_str("<h2>Quarantined workers</h2><ul>");
        for q in &status.quarantined {
            let _ = write!(out, "<li>{}</li>", esc(q));
        }
        out.push_str("</ul>");
    }
    out
}

fn job_row(out: &mut String, j: &JobView, now: f64) {
    let waits = j.waits_for.iter().map(|w| job_link(*w)).collect::<Vec<_>>().join(" ");
    let _ = write!(
        out,
        "<tr id=\"job-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}-{}</td><td>{}</td><td>{}</td><td>{waits}</td><td>{}</td></tr>",
        j.id,
        job_link(j.id),
        esc(&j.name),
        state(j.state),
        j.priority,
        esc(&j.submitter),
        esc(j.batch.as_deref().unwrap_or("")),
        esc(&j.target.chroot),
        esc(&j.target.arch),
        esc(j.builder.as_deref().unwrap_or("")),
        j.attempt,
        ago(j.created_at, now)
    );
}

const JOB_HEAD: &str = "<tr><th>Job</th><th>Package</th><th>State</th><th>Priority</th>\
    <th>Submitter</th><th>Batch</th><th>Target</th><th>Builder</th><th>Attempt</th>\
    <th>Waits for</th><th>Queued</th></tr>";

/// The queue: counts by state, live jobs, batches, the most recently ended jobs.
pub fn queue(jobs: &[JobView], now: f64) -> String {
    let mut out = String::from("<p id=\"counts\">");
    for s in JobState::ALL {
        let n = jobs.iter().filter(|j| j.state == s).count();
        let _ = write!(out, "{}: <strong>{n}</strong> &nbsp; ", state(s));
    }
    out.push_str("</p><h2>Waiting and running</h2><table id=\"active\">");
    out.push_str(JOB_HEAD);
    let mut any = false;
    for j in jobs.iter().filter(|j| !j.state.is_final()) {
        job_row(&mut out, j, now);
        any = true;
    }
    if !any {
        out.push_str("<tr><td colspan=\"11\" class=\"muted\">the queue is empty</td></tr>");
    }
    out.push_str("</table><h2>Batches</h2><table id=\"batches\"><tr><th>Batch</th><th>Jobs</th>");
    for s in JobState::ALL {
        let _ = write!(out, "<th>{}</th>", s.as_str());
    }
    out.push_str("<th>Queued</th></tr>");
    let mut batches: BTreeMap<&str, Vec<&JobView>> = BTreeMap::new();
    for j in jobs {
        if let Some(b) = &j.batch {
            batches.entry(b.as_str()).or_default().push(j);
        }
    }
    let mut batches: Vec<_> = batches.into_iter().collect();
    batches.sort_by(|a, b| {
        let first = |v: &Vec<&JobView>| v.iter().map(|j| j.created_at).fold(f64::MAX, f64::min);
        first(&b.1).total_cmp(&first(&a.1))
    });
    if batches.is_empty() {
        out.push_str("<tr><td colspan=\"9\" class=\"muted\">no batch</td></tr>");
    }
    for (name, members) in batches.iter().take(RECENT) {
        let _ = write!(out, "<tr><td>{}</td><td>", esc(name));
        let ids: Vec<String> = members.iter().map(|j| job_link(j.id)).collect();
        out.push_str(&ids.join(" "));
        out.push_str("</td>");
        for s in JobState::ALL {
            let n = members.iter().filter(|j| j.state == s).count();
            let _ = write!(out, "<td>{}</td>", if n == 0 { String::new() } else { n.to_string() });
        }
        let created = members.iter().map(|j| j.created_at).fold(f64::MAX, f64::min);
        let _ = write!(out, "<td>{}</td></tr>", ago(created, now));
    }
    out.push_str("</table><h2>Recently ended</h2><table id=\"ended\">");
    out.push_str(
        "<tr><th>Job</th><th>Package</th><th>State</th><th>Why</th><th>Builder</th>\
         <th>Batch</th><th>Ended</th></tr>",
    );
    let mut ended: Vec<&JobView> = jobs.iter().filter(|j| j.state.is_final()).collect();
    ended.sort_by(|a, b| b.updated_at.total_cmp(&a.updated_at));
    if ended.is_empty() {
        out.push_str("<tr><td colspan=\"7\" class=\"muted\">none yet</td></tr>");
    }
    for j in ended.into_iter().take(RECENT) {
        let why = j.failure.as_ref().map_or(String::new(), |f| {
            format!("{}: {}", f.kind.as_str(), f.message.chars().take(200).collect::<String>())
        });
        let _ = write!(
            out,
            "<tr id=\"job-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            j.id,
            job_link(j.id),
            esc(&j.name),
            state(j.state),
            esc(&why),
            esc(j.builder.as_deref().unwrap_or("")),
            esc(j.batch.as_deref().unwrap_or("")),
            ago(j.updated_at, now)
        );
    }
    out.push_str("</table>");
    out
}

/// A job's summary with the operator's actions. `csrf`: the session's token for the forms.
pub fn job_summary(j: &JobView, now: f64, csrf: &str) -> String {
    let mut out = String::from("<table id=\"summary\">");
    let mut row = |k: &str, v: String| {
        let _ = write!(out, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row("Package", esc(&j.name));
    row("State", format!("<span id=\"job-state\">{}</span>", state(j.state)));
    row("Target", format!("{}-{}", esc(&j.target.chroot), esc(&j.target.arch)));
    row("Priority", j.priority.to_string());
    row("Submitter", esc(&j.submitter));
    row("Batch", esc(j.batch.as_deref().unwrap_or("—")));
    row("Builder", esc(j.builder.as_deref().unwrap_or("—")));
    row("Attempt", format!("{} ({} infrastructure failure(s))", j.attempt, j.infra_failures));
    row("Queued", format!("{} UTC ({})", utc(j.created_at), ago(j.created_at, now)));
    row("Last change", format!("{} UTC ({})", utc(j.updated_at), ago(j.updated_at, now)));
    row("Timeout", duration(j.timeout_secs as f64));
    if !j.waits_for.is_empty() {
        row("Waits for", j.waits_for.iter().map(|w| job_link(*w)).collect::<Vec<_>>().join(" "));
    }
    if let Some(f) = &j.failure {
        row(
            "Failure",
            format!("<span class=\"err\">{}: {}</span>", f.kind.as_str(), esc(&f.message)),
        );
    }
    out.push_str("</table><p id=\"actions\">");
    let form = |action: &str, label: &str| {
        format!(
            "<form class=\"inline\" method=\"post\" action=\"/ui/jobs/{}/{action}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button id=\"{action}\" type=\"submit\">{label}</button></form> ",
            j.id,
            attr(csrf)
        )
    };
    if !j.state.is_final() {
        out.push_str(&form("cancel", "Cancel"));
    }
    if matches!(j.state, JobState::Failed | JobState::Cancelled) {
        out.push_str(&form("retry", "Retry"));
    }
    if j.state == JobState::Waiting {
        let _ = write!(
            out,
            "<form class=\"inline\" method=\"post\" action=\"/ui/jobs/{}/priority\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input id=\"priority-value\" name=\"priority\" type=\"number\" min=\"-1000\" \
             max=\"1000\" value=\"{}\"> <button id=\"priority\" type=\"submit\">Set priority\
             </button></form>",
            j.id,
            attr(csrf),
            j.priority
        );
    }
    out.push_str("</p>");
    out
}

/// A job's state history.
pub fn job_history(events: &[JobEvent]) -> String {
    let mut out = String::from(
        "<table id=\"history\"><tr><th>#</th><th>At (UTC)</th><th>From</th><th>To</th>\
         <th>Attempt</th><th>Builder</th><th>Detail</th></tr>",
    );
    for e in events {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            utc(e.at),
            e.from.map_or(String::from("—"), state),
            state(e.to),
            e.attempt,
            esc(e.builder.as_deref().unwrap_or("")),
            esc(&e.detail)
        );
    }
    out.push_str("</table>");
    out
}

/// A job's artefacts (of its current attempt), with download links.
pub fn job_artifacts(j: &JobView) -> String {
    if j.artifacts.is_empty() {
        return "<p class=\"muted\">no artefact (yet)</p>".to_owned();
    }
    let mut out =
        String::from("<table id=\"artifacts\"><tr><th>File</th><th>Size</th><th>blake3</th></tr>");
    for a in &j.artifacts {
        let _ = write!(
            out,
            "<tr><td><a href=\"/ui/jobs/{}/artifacts/{}\">{}</a></td><td>{}</td><td><code>{}</code></td></tr>",
            j.id,
            attr(&percent_encode(&a.name)),
            esc(&a.name),
            bytes(a.size),
            esc(&a.blake3)
        );
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(percent_encode("a b?#%.rpm"), "a%20b%3F%23%25.rpm");
    }
}
