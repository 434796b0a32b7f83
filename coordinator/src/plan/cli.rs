//! `discomy plan`'s options and the command but for asking the coordinator ([`Args::run`]):
//! reading package lists (`.lz4`/`.xz`/`.gz` unpacked by their tools), inventories and history
//! files, planning, the plot and the output. Asking the coordinator (the live fleet, the build
//! queue's history) stays with the `discomy` binary, which hands [`Args::run`] the two calls.

use std::path::{Path, PathBuf};

use super::estimate::HistoryRecord;
use super::fleet::{PlanFleet, parse_add_nodes, parse_bandwidth};
use super::workload::Workload;
use super::{PlanError, PlanOptions, import, inventory, plot};

/// `discomy plan` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The package list: a Debian `Sources` index (`.lz4`, `.xz`, `.gz` are unpacked), a
    /// repoquery-style text (`pkg: dep dep`) or a workload JSON with costs. Repeatable.
    #[arg(long, value_name = "FILE", required = true)]
    pub packages: Vec<PathBuf>,
    /// The fleet: an inventory (TOML or JSON); without it, the coordinator's live fleet.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Links the live fleet is assumed to have (the coordinator does not measure them).
    #[arg(long, value_name = "SPEED", default_value = "1Gbit")]
    pub assume_link: String,
    /// Recorded history: a JSON list of `{"name", "wall_s"}` (optionally `"serial_s"`, the
    /// configure, link and tests part when measured, and `"artefact_bytes"`).
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Recorded history from the build queue's finished jobs (`http://HOST:PORT`; the token
    /// from `DISCOMY_TOKEN`).
    #[arg(long, value_name = "URL")]
    pub history_api: Option<String>,
    /// How wide the compile part of a recorded build ran (its `make -j`).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub history_jobs: u32,
    /// Only these packages and what they build-depend on (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// Drop build dependencies on cycles (reported) instead of refusing the list.
    #[arg(long)]
    pub break_cycles: bool,
    /// What-if: more nodes, `COUNTxSLOTS` (`20x16`).
    #[arg(long, value_name = "NxS")]
    pub add_nodes: Option<String>,
    /// What-if: every link at this speed (`1Gbit`, `10Gbit`, `125MB/s`).
    #[arg(long, value_name = "SPEED")]
    pub link: Option<String>,
    /// Write an SVG plot of the makespan against fleet size.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Print JSON (the field names are a stable interface).
    #[arg(long)]
    pub json: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PlanError + '_ {
    move |e| PlanError::Io { what: path.display().to_string(), source: e }
}

/// A file's text, unpacked with `lz4`, `xz` or `gzip` by its extension; at most
/// [`import::MAX_LIST_BYTES`].
pub fn read_text(path: &Path) -> Result<String, PlanError> {
    read_text_at_most(path, import::MAX_LIST_BYTES)
}

/// [`read_text`] with the limit given: reads (or unpacks) at most `limit + 1` bytes, so a
/// huge file or a small archive that unpacks to a huge one is refused without being held.
fn read_text_at_most(path: &Path, limit: usize) -> Result<String, PlanError> {
    use std::io::Read;
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("lz4") => Some("lz4"),
        Some("xz") => Some("xz"),
        Some("gz") => Some("gzip"),
        _ => None,
    };
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut bytes = Vec::new();
    match tool {
        Some(tool) => {
            let mut child = std::process::Command::new(tool)
                .arg("-dc")
                .arg(path)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(io(path))?;
            let stdout = child.stdout.take().expect("stdout is piped");
            let read = stdout.take(cap).read_to_end(&mut bytes);
            if bytes.len() > limit {
                // Stop the tool rather than drain what is refused anyway.
                let _ = child.kill();
            }
            let status = child.wait().map_err(io(path))?;
            read.map_err(io(path))?;
            if bytes.len() <= limit && !status.success() {
                return Err(PlanError::Invalid(format!("{tool} -dc {} failed", path.display())));
            }
        }
        None => {
            std::fs::File::open(path)
                .and_then(|f| f.take(cap).read_to_end(&mut bytes))
                .map_err(io(path))?;
        }
    }
    if bytes.len() > limit {
        return Err(PlanError::Invalid(format!("{}: too large", path.display())));
    }
    String::from_utf8(bytes)
        .map_err(|_| PlanError::Invalid(format!("{} is not UTF-8", path.display())))
}

impl Args {
    /// The recorded history file's records (none without `--history`).
    pub fn history_file(&self) -> Result<Vec<HistoryRecord>, PlanError> {
        let Some(path) = &self.history else { return Ok(Vec::new()) };
        serde_json::from_str(&read_text(path)?).map_err(|e| PlanError::Parse {
            what: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The workload from `--packages` (costs from `history` or estimated), `--select`ed, and
    /// the notes made reading it. The lists together are at most [`import::MAX_LIST_BYTES`].
    pub fn workload(
        &self,
        history: &[HistoryRecord],
    ) -> Result<(Workload, Vec<String>), PlanError> {
        let mut text = String::new();
        for p in &self.packages {
            // The lists together stay within the limit: each is read with what is left of it.
            let left = import::MAX_LIST_BYTES.saturating_sub(text.len());
            text.push_str(&read_text_at_most(p, left)?);
            text.push_str("\n\n");
        }
        let name: Vec<String> = self.packages.iter().map(|p| p.display().to_string()).collect();
        let (mut w, notes) = import::parse_any(&text, &name.join(" "), history, self.history_jobs)?;
        if !self.select.is_empty() {
            w = import::select(&w, &self.select)?;
        }
        Ok((w, notes))
    }

    /// The inventory's fleet, or `None` when the live fleet is wanted.
    pub fn inventory(&self) -> Result<Option<PlanFleet>, PlanError> {
        let Some(path) = &self.inventory else { return Ok(None) };
        inventory::parse(&read_text(path)?, &path.display().to_string()).map(Some)
    }

    /// `--assume-link` in bytes per second.
    pub fn assumed_link(&self) -> Result<f64, PlanError> {
        parse_bandwidth(&self.assume_link)
            .ok_or_else(|| PlanError::Invalid(format!("--assume-link {:?}", self.assume_link)))
    }

    /// The whole command but for asking the coordinator: reads the files, adds the build
    /// queue's history from `queue_history` (called with `--history-api`'s URL, only when it is
    /// given), takes the live fleet from `live_fleet` (called with `--assume-link`'s bytes per
    /// second, only without `--inventory`), plans, writes `--plot`, and returns what to print:
    /// the JSON report with `--json`, the text one otherwise.
    pub fn run<E: From<PlanError>>(
        &self,
        queue_history: impl FnOnce(&str) -> Result<Vec<HistoryRecord>, E>,
        live_fleet: impl FnOnce(f64) -> Result<PlanFleet, E>,
    ) -> Result<String, E> {
        let mut history = self.history_file()?;
        if let Some(url) = &self.history_api {
            history.extend(queue_history(url)?);
        }
        let (workload, notes) = self.workload(&history)?;
        let fleet = match self.inventory()? {
            Some(fleet) => fleet,
            None => live_fleet(self.assumed_link()?)?,
        };
        let mut report = super::run(&fleet, &workload, &self.options()?)?;
        report.notes.extend(notes);
        if let Some(path) = &self.plot {
            let svg = plot::svg(&report.curve, "discomy plan: makespan against fleet size")?;
            std::fs::write(path, svg).map_err(io(path))?;
        }
        Ok(if self.json {
            let json = serde_json::to_string_pretty(&report)
                .map_err(|e| PlanError::Invalid(format!("the report as JSON: {e}")))?;
            json + "\n"
        } else {
            report.render_text()
        })
    }

    /// The what-ifs and the rest.
    pub fn options(&self) -> Result<PlanOptions, PlanError> {
        let add_nodes = match &self.add_nodes {
            Some(a) => Some(parse_add_nodes(a).ok_or_else(|| {
                PlanError::Invalid(format!("--add-nodes {a:?}: give COUNTxSLOTS, e.g. 20x16"))
            })?),
            None => None,
        };
        let link = match &self.link {
            Some(l) => Some(
                parse_bandwidth(l).ok_or_else(|| PlanError::Invalid(format!("--link {l:?}")))?,
            ),
            None => None,
        };
        Ok(PlanOptions {
            add_nodes,
            link,
            curve: self.plot.is_some(),
            break_cycles: self.break_cycles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_within_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("list.txt");
        std::fs::write(&plain, "a: b\n".repeat(100)).expect("write");
        assert_eq!(read_text_at_most(&plain, 500).expect("at the limit").len(), 500);
        let err = read_text_at_most(&plain, 499).expect_err("one byte over").to_string();
        assert!(err.contains("too large"), "{err}");
        // A small archive that unpacks beyond the limit is refused while unpacking.
        let packed = dir.path().join("list.txt.gz");
        let gz = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("head -c 4000000 /dev/zero | tr '\\0' a | gzip > {}", packed.display()))
            .status()
            .expect("gzip");
        assert!(gz.success());
        assert!(std::fs::metadata(&packed).expect("packed").len() < 100_000);
        assert_eq!(read_text_at_most(&packed, 4_000_000).expect("unpacked").len(), 4_000_000);
        let err = read_text_at_most(&packed, 1000).expect_err("bomb").to_string();
        assert!(err.contains("too large"), "{err}");
        let broken = dir.path().join("broken.gz");
        std::fs::write(&broken, "not gzip").expect("write");
        assert!(read_text_at_most(&broken, 1000).is_err());
    }
}
