//! The text output of `discomy plan`.

use std::fmt::Write;

use super::Report;
use super::model::Evaluation;

/// Seconds as `1h 02m`, `4m 05s`, `12.3 s`.
pub fn duration(s: f64) -> String {
    if !s.is_finite() {
        return "never (a build cannot finish)".into();
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let t = s.round() as u64;
    if t < 3600 {
        format!("{}m {:02}s", t / 60, t % 60)
    } else {
        format!("{}h {:02}m", t / 3600, (t % 3600) / 60)
    }
}

/// Bytes as `1.2 GB`.
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    match b {
        x if x >= 1e12 => format!("{:.1} TB", x / 1e12),
        x if x >= 1e9 => format!("{:.1} GB", x / 1e9),
        x if x >= 1e6 => format!("{:.1} MB", x / 1e6),
        x => format!("{:.0} kB", x / 1e3),
    }
}

fn evaluation(out: &mut String, e: &Evaluation) {
    let _ = writeln!(out, "  lower bound       {}", duration(e.lower_bound_s));
    let _ = writeln!(
        out,
        "    chain           {} ({} serial: configure, link, tests) {}",
        duration(e.chain_s),
        duration(e.chain_serial_s),
        path(&e.critical_path)
    );
    let _ = writeln!(out, "    work/capacity   {}", duration(e.work_s));
    let _ = writeln!(out, "    bytes/links     {}", duration(e.network_s));
    let _ = writeln!(
        out,
        "  expected makespan {} (simulated {}), fleet {:.0}% busy",
        duration(e.expected_s),
        duration(e.simulated_s),
        e.utilisation * 100.0
    );
    let _ = writeln!(out, "  bottleneck        {}", e.bottleneck.as_str());
}

fn path(p: &[String]) -> String {
    match p.len() {
        0 => String::new(),
        1..=6 => format!("[{}]", p.join(" > ")),
        n => format!("[{} > … ({} more) > {}]", p[..3].join(" > "), n - 4, p[n - 1]),
    }
}

/// Renders the report for a terminal.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let w = &r.workload;
    let _ = writeln!(
        out,
        "workload: {} — {} packages, {} units, {} of compile CPU, {} serial \
         ({} given, {} from history, {} ESTIMATED)",
        w.name,
        w.packages,
        w.units,
        duration(w.compile_cpu_s),
        duration(w.serial_s),
        w.given,
        w.history,
        w.estimated
    );
    let f = &r.fleet;
    let _ = writeln!(
        out,
        "fleet: {} — {} nodes, {} slots, capacity {:.1} core-equivalents{}",
        f.source,
        f.nodes,
        f.slots,
        f.capacity,
        f.ingress_bps.map(|b| format!(", ingress {:.0} Mbit/s", b * 8.0 / 1e6)).unwrap_or_default()
    );
    for a in &f.assumed {
        let _ = writeln!(out, "  assumed: {a}");
    }
    evaluation(&mut out, &r.plan);
    let s = &r.plan.storage;
    let _ = writeln!(
        out,
        "  storage           {} in all: object cache {}, toolchain stores {}, artefacts {}, \
         repositories {}; {} per node",
        bytes(s.total_bytes),
        bytes(s.object_cache_bytes),
        bytes(s.toolchain_bytes),
        bytes(s.artefact_bytes),
        bytes(s.repository_bytes),
        bytes(s.per_node_bytes)
    );
    if !s.short_nodes.is_empty() {
        let _ = writeln!(out, "  SHORT OF DISK: {}", s.short_nodes.join(", "));
    }
    for wi in &r.what_if {
        let _ = writeln!(out, "what if {}:", wi.what);
        evaluation(&mut out, &wi.plan);
    }
    if !r.curve.is_empty() {
        let _ = writeln!(out, "makespan against fleet size:");
        for p in &r.curve {
            let _ = writeln!(
                out,
                "  {:>6} nodes {:>7} slots  {:>12}  (bound {})",
                p.nodes,
                p.slots,
                duration(p.expected_s),
                duration(p.lower_bound_s)
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}
