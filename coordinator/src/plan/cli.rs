//! `discomy plan`'s options and the file-reading half of the command (package lists, with
//! `.lz4`/`.xz`/`.gz` unpacked by their tools; inventories; history files). Asking the
//! coordinator (the live fleet, the build queue's history) stays with the `discomy` binary.

use std::path::{Path, PathBuf};

use super::estimate::HistoryRecord;
use super::fleet::{PlanFleet, parse_add_nodes, parse_bandwidth};
use super::workload::Workload;
use super::{PlanError, PlanOptions, import, inventory};

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
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("lz4") => Some("lz4"),
        Some("xz") => Some("xz"),
        Some("gz") => Some("gzip"),
        _ => None,
    };
    let bytes = match tool {
        Some(tool) => {
            let out =
                std::process::Command::new(tool).arg("-dc").arg(path).output().map_err(io(path))?;
            if !out.status.success() {
                return Err(PlanError::Invalid(format!("{tool} -dc {} failed", path.display())));
            }
            out.stdout
        }
        None => std::fs::read(path).map_err(io(path))?,
    };
    if bytes.len() > import::MAX_LIST_BYTES {
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
    /// the notes made reading it.
    pub fn workload(
        &self,
        history: &[HistoryRecord],
    ) -> Result<(Workload, Vec<String>), PlanError> {
        let mut text = String::new();
        for p in &self.packages {
            text.push_str(&read_text(p)?);
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
