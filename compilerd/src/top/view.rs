//! `discomy top`'s screen, drawn from a [`Model`] with ratatui: a header (the farm's totals, or
//! why the coordinator did not answer), the node table, the units flowing per build host, the
//! build queue (or a line saying why there is none), and a footer with the keys.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

use discomy_protocol::ops::{JobState, JobView};

use super::model::{Model, Queue, SortKey};

/// The most rows the build-host pane takes.
const MAX_SUBMITTER_ROWS: usize = 8;
/// The most rows the build-queue pane takes.
const MAX_JOB_ROWS: usize = 12;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, model: &Model, now: Instant) {
    let subs = model.submitters().len();
    let jobs = model.jobs().len();
    let sub_height = subs.clamp(1, MAX_SUBMITTER_ROWS) + 3;
    let queue_height = match model.queue {
        Queue::Jobs(..) => jobs.clamp(1, MAX_JOB_ROWS) + 3,
        _ => 1,
    };
    let [header, nodes, submitters, queue, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(4),
        Constraint::Length(u16::try_from(sub_height).unwrap_or(u16::MAX)),
        Constraint::Length(u16::try_from(queue_height).unwrap_or(u16::MAX)),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, header, model, now);
    draw_nodes(frame, nodes, model);
    draw_submitters(frame, submitters, model);
    draw_queue(frame, queue, model);
    draw_footer(frame, footer, model);
}

fn draw_header(frame: &mut Frame, area: Rect, model: &Model, now: Instant) {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let first = match &model.farm {
        Some(farm) => {
            let (busy, slots) = model.slot_totals();
            Line::from(vec![
                Span::styled(format!("farm {}", farm.farm), bold),
                Span::raw(format!(
                    " @ {}: {} nodes, {busy}/{slots} slots in use, {} units queued, \
                     {} hedged, {} nodes lost",
                    model.coordinator,
                    farm.nodes.len(),
                    farm.queued,
                    farm.hedged,
                    farm.nodes_lost
                )),
            ])
        }
        None => Line::from(vec![
            Span::styled("discomy top", bold),
            Span::raw(format!(": waiting for the coordinator at {}", model.coordinator)),
        ]),
    };
    let second = match (&model.farm_error, model.farm_at) {
        (Some(err), _) => {
            Line::styled(format!("coordinator did not answer: {err}"), Style::new().fg(Color::Red))
        }
        (None, Some(at)) => {
            let quarantined = match &model.farm {
                Some(f) if !f.quarantined.is_empty() => {
                    format!("; quarantined: {}", f.quarantined.join(", "))
                }
                _ => String::new(),
            };
            Line::styled(
                format!(
                    "updated {:.1} s ago{quarantined}",
                    now.saturating_duration_since(at).as_secs_f64()
                ),
                Style::new().fg(Color::DarkGray),
            )
        }
        (None, None) => Line::raw(""),
    };
    frame.render_widget(Paragraph::new(vec![first, second]), area);
}

/// A text bar of `used` out of `total`, `width` cells wide.
fn bar(used: u64, total: u64, width: usize) -> String {
    let filled = (used.min(total) * width as u64).checked_div(total).unwrap_or(0);
    let filled = usize::try_from(filled).unwrap_or(width);
    let mut s = "█".repeat(filled);
    s.push_str(&"░".repeat(width - filled));
    s
}

/// A column as wide as its widest text (or its header), at most `max`.
fn text_width<'a>(texts: impl Iterator<Item = &'a str>, header: &str, max: usize) -> u16 {
    let widest = texts.map(|t| t.chars().count()).chain([header.chars().count()]).max();
    u16::try_from(widest.unwrap_or(0).min(max)).unwrap_or(u16::MAX)
}

fn header_row(names: &[&str]) -> Row<'static> {
    Row::new(names.iter().map(|n| Cell::from(n.to_string())))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
}

fn draw_nodes(frame: &mut Frame, area: Rect, model: &Model) {
    let nodes = model.nodes();
    let all = model.farm.as_ref().map_or(0, |f| f.nodes.len());
    let order = if model.reversed { "reversed" } else { "natural" };
    let mut title = format!(" nodes {}/{all} | sort: {} ({order})", nodes.len(), model.sort.name());
    if !model.filter.is_empty() {
        title.push_str(&format!(" | filter: {}", model.filter));
    }
    title.push(' ');
    let columns: [(&str, Option<SortKey>); 11] = [
        ("id", None),
        ("host", Some(SortKey::Host)),
        ("address", Some(SortKey::Address)),
        ("slots", Some(SortKey::Slots)),
        ("used", Some(SortKey::Used)),
        ("in use", None),
        ("running", None),
        ("load%", Some(SortKey::Load)),
        ("free MiB", None),
        ("speed kB/s", Some(SortKey::Speed)),
        ("done", Some(SortKey::Done)),
    ];
    let names: Vec<String> = columns
        .iter()
        .map(|(name, key)| match key {
            Some(k) if *k == model.sort => format!("{name}*"),
            _ => (*name).to_owned(),
        })
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let rows = nodes.iter().map(|n| {
        let load_style = match n.load.foreign_load {
            0..=299 => Style::new(),
            300..=699 => Style::new().fg(Color::Yellow),
            _ => Style::new().fg(Color::Red),
        };
        Row::new(vec![
            Cell::from(n.id.to_string()),
            Cell::from(n.host.clone()),
            Cell::from(n.address.clone()),
            Cell::from(n.slots.to_string()),
            Cell::from(n.assigned.to_string()),
            Cell::from(bar(u64::from(n.assigned), u64::from(n.slots), 12))
                .style(Style::new().fg(Color::Green)),
            Cell::from(n.load.running.to_string()),
            Cell::from(format!("{:.1}", f64::from(n.load.foreign_load) / 10.0)).style(load_style),
            Cell::from(n.load.free_mem_mb.to_string()),
            Cell::from(if n.samples == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", n.speed_wall_bps / 1000.0)
            }),
            Cell::from(n.done_total.to_string()),
        ])
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Length(text_width(nodes.iter().map(|n| n.host.as_str()), "host", 32)),
        Constraint::Length(text_width(nodes.iter().map(|n| n.address.as_str()), "address*", 40)),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(11),
        Constraint::Length(8),
    ];
    let table = Table::new(rows, widths)
        .header(header_row(&names))
        .column_spacing(2)
        .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

fn draw_submitters(frame: &mut Frame, area: Rect, model: &Model) {
    let subs = model.submitters();
    let block = Block::bordered().title(format!(" units per build host: {} hosts ", subs.len()));
    if subs.is_empty() {
        let text = Paragraph::new("no build host has units placed or queued").block(block);
        frame.render_widget(text, area);
        return;
    }
    let peak = subs.iter().map(|s| s.running + s.queued).max().unwrap_or(0).max(1);
    let rows = subs.iter().map(|s| {
        Row::new(vec![
            Cell::from(s.host.clone()),
            Cell::from(s.running.to_string()),
            Cell::from(s.queued.to_string()),
            Cell::from(bar(s.running, peak, 24)).style(Style::new().fg(Color::Cyan)),
        ])
    });
    let host_width = text_width(subs.iter().map(|s| s.host.as_str()), "build host", 40);
    let widths = [
        Constraint::Length(host_width),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(24),
    ];
    let table = Table::new(rows, widths)
        .header(header_row(&["build host", "running", "queued", "running (of the busiest)"]))
        .column_spacing(2)
        .block(block);
    frame.render_widget(table, area);
}

/// `1h02m`, `3m07s`, `12s`.
fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

fn job_row(j: &JobView, now_unix: f64) -> Row<'static> {
    let style = match j.state {
        JobState::Running => Style::new().fg(Color::Green),
        JobState::Scheduled => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    };
    Row::new(vec![
        Cell::from(j.id.to_string()),
        Cell::from(j.state.as_str()).style(style),
        Cell::from(j.priority.to_string()),
        Cell::from(j.name.clone()),
        Cell::from(format!("{}/{}", j.target.chroot, j.target.arch)),
        Cell::from(j.submitter.clone()),
        Cell::from(j.batch.clone().unwrap_or_else(|| "-".into())),
        Cell::from(j.builder.clone().unwrap_or_else(|| "-".into())),
        Cell::from(j.attempt.to_string()),
        Cell::from(age(now_unix - j.updated_at)),
    ])
}

fn draw_queue(frame: &mut Frame, area: Rect, model: &Model) {
    let dim = Style::new().fg(Color::DarkGray);
    let (api, all) = match &model.queue {
        Queue::NotConfigured => {
            let line = "build queue: no API given (--api http://HOST:PORT or DISCOMY_API)";
            frame.render_widget(Paragraph::new(Line::styled(line, dim)), area);
            return;
        }
        Queue::Pending(api) => {
            let line = format!("build queue: asking {api}");
            frame.render_widget(Paragraph::new(Line::styled(line, dim)), area);
            return;
        }
        Queue::Unreachable(api, why) => {
            let line = format!("build queue: API {api} not reachable: {why}");
            let style = Style::new().fg(Color::Yellow);
            frame.render_widget(Paragraph::new(Line::styled(line, style)), area);
            return;
        }
        Queue::Jobs(api, all) => (api, all),
    };
    let jobs = model.jobs();
    let count = |s: JobState| all.iter().filter(|j| j.state == s).count();
    let title = format!(
        " build queue ({api}): {} running, {} scheduled, {} waiting ",
        count(JobState::Running),
        count(JobState::Scheduled),
        count(JobState::Waiting)
    );
    let block = Block::bordered().title(title);
    if jobs.is_empty() {
        frame.render_widget(Paragraph::new("no job waiting or running").block(block), area);
        return;
    }
    let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let rows = jobs.iter().map(|j| job_row(j, now_unix));
    let widths = [
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(text_width(jobs.iter().map(|j| j.name.as_str()), "name", 40)),
        Constraint::Length(18),
        Constraint::Length(text_width(jobs.iter().map(|j| j.submitter.as_str()), "submitter", 20)),
        Constraint::Length(text_width(jobs.iter().filter_map(|j| j.batch.as_deref()), "batch", 20)),
        Constraint::Length(text_width(
            jobs.iter().filter_map(|j| j.builder.as_deref()),
            "builder",
            24,
        )),
        Constraint::Length(8),
        Constraint::Length(7),
    ];
    let names = [
        "id",
        "state",
        "prio",
        "name",
        "target",
        "submitter",
        "batch",
        "builder",
        "attempt",
        "since",
    ];
    let table = Table::new(rows, widths).header(header_row(&names)).column_spacing(2).block(block);
    frame.render_widget(table, area);
}

fn draw_footer(frame: &mut Frame, area: Rect, model: &Model) {
    let key = Style::new().add_modifier(Modifier::REVERSED);
    let line = if model.editing {
        Line::from(vec![
            Span::styled(" filter: ", key),
            Span::raw(format!(" {}_", model.filter)),
            Span::styled("  Enter", key),
            Span::raw(" keep  "),
            Span::styled("Esc", key),
            Span::raw(" clear"),
        ])
    } else {
        let mut spans = Vec::new();
        for (k, what) in [
            ("q", "quit"),
            ("s", "sort column"),
            ("r", "reverse"),
            ("/", "filter host/address"),
            ("Esc", "clear filter"),
        ] {
            spans.push(Span::styled(format!(" {k} "), key));
            spans.push(Span::raw(format!(" {what}  ")));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use discomy_protocol::coordinator::{FarmStatus, NodeStatus};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use crate::top::model::Update;

    fn screen(model: &Model) -> String {
        let mut terminal =
            Terminal::new(TestBackend::new(140, 30)).unwrap_or_else(|e| panic!("terminal: {e}"));
        terminal.draw(|f| draw(f, model, Instant::now())).unwrap_or_else(|e| panic!("draw: {e}"));
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn shows_nodes_totals_keys_and_why_there_is_no_queue() {
        let mut m = Model::new("127.0.0.1:9", Queue::NotConfigured);
        let text = screen(&m);
        assert!(text.contains("waiting for the coordinator at 127.0.0.1:9"), "{text}");
        let node = |address: &str, slots| NodeStatus {
            address: address.into(),
            host: "box".into(),
            slots,
            assigned: 1,
            ..NodeStatus::default()
        };
        let farm = FarmStatus {
            farm: "default".into(),
            nodes: vec![node("127.0.0.1:4001", 3), node("127.0.0.1:4002", 1)],
            submitters: vec![discomy_protocol::coordinator::SubmitterStatus {
                host: "buildhost7".into(),
                running: 2,
                queued: 5,
            }],
            ..FarmStatus::default()
        };
        m.apply(Update::Farm(Ok(farm)), Instant::now());
        let text = screen(&m);
        assert!(text.contains("2 nodes, 2/4 slots in use"), "{text}");
        assert!(text.contains("127.0.0.1:4001") && text.contains("127.0.0.1:4002"), "{text}");
        assert!(text.contains("sort: address (natural)"), "{text}");
        assert!(text.contains("build queue: no API given"), "{text}");
        assert!(text.contains("units per build host: 1 hosts"), "{text}");
        let row = text.lines().find(|l| l.contains("buildhost7")).unwrap_or_default();
        let words: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(words.get(1..3), Some(&["2", "5"][..]), "{text}");
        assert!(text.contains(" q  quit"), "{text}");
        m.editing = true;
        m.filter = "4002".into();
        let text = screen(&m);
        assert!(text.contains("filter:  4002_"), "{text}");
        assert!(!text.contains("127.0.0.1:4001"), "{text}");
        m.apply(Update::Queue(Queue::Unreachable("http://x:1".into(), "refused".into())), {
            Instant::now()
        });
        assert!(screen(&m).contains("build queue: API http://x:1 not reachable: refused"));
    }

    #[test]
    fn bars_and_ages() {
        assert_eq!(bar(1, 4, 8), "██░░░░░░");
        assert_eq!(bar(9, 4, 4), "████");
        assert_eq!(bar(0, 0, 3), "░░░");
        assert_eq!(age(5.2), "5s");
        assert_eq!(age(187.0), "3m07s");
        assert_eq!(age(3720.0), "1h02m");
        assert_eq!(age(-3.0), "0s");
    }
}
