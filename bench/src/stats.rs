//! Small numeric and reporting helpers: medians, ratios, millisecond formatting, JSON numbers, the
//! load average, and the wrapper's `DISCOMY_STATS_FILE` outcome log.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

/// Median (mean of the two middle values for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// `a - b` when both are known.
pub fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

/// `a / b` when both are known and the result is finite.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let r = a? / b?;
    r.is_finite().then_some(r)
}

/// Right-aligned milliseconds with one decimal, `-` when unknown.
pub fn ms(v: Option<f64>, width: usize) -> String {
    match v {
        Some(x) => format!("{x:>width$.1}"),
        None => format!("{:>width$}", "-"),
    }
}

/// Like [`ms`] but with an explicit sign, for overheads.
pub fn signed_ms(v: Option<f64>, width: usize) -> String {
    match v {
        Some(x) => format!("{x:>+width$.1}"),
        None => format!("{:>width$}", "-"),
    }
}

/// A JSON number rounded to 0.001 (ms), or `null`.
pub fn num(v: Option<f64>) -> Value {
    match v {
        Some(x) if x.is_finite() => Value::from((x * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

pub fn nums(v: &[f64]) -> Value {
    Value::Array(v.iter().map(|&x| num(Some(x))).collect())
}

/// Counts of the wrapper's per-call outcomes (`<outcome>\t<exit_code>\t<source>` lines).
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcomes {
    pub remote: usize,
    pub local: usize,
    pub fallback: usize,
    pub cache: usize,
    /// Lines the wrapper's parser does not read.
    pub other: usize,
}

impl Outcomes {
    /// Read a stats file; a missing file means no lines.
    pub fn read(path: &Path) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut o = Outcomes::default();
        use discomy_protocol::stats::{Outcome, StatsLine};
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match StatsLine::parse(line).filter(|l| !l.ltrans).map(|l| l.outcome) {
                Some(Outcome::Remote) => o.remote += 1,
                Some(Outcome::Local) => o.local += 1,
                Some(Outcome::Fallback) => o.fallback += 1,
                Some(Outcome::Cache) => o.cache += 1,
                _ => o.other += 1,
            }
        }
        Ok(o)
    }

    pub fn total(&self) -> usize {
        self.remote + self.local + self.fallback + self.cache + self.other
    }

    pub fn summary(&self) -> String {
        format!(
            "remote {}, local {}, fallback {}, cache {}, other {}",
            self.remote, self.local, self.fallback, self.cache, self.other
        )
    }

    pub fn to_json(self) -> Value {
        serde_json::json!({
            "remote": self.remote, "local": self.local, "fallback": self.fallback,
            "cache": self.cache, "other": self.other,
        })
    }
}

/// `/proc/loadavg`'s first three fields (other work on the machine skews every figure).
pub fn load_average() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(s) => s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Write pretty JSON to `path`.
pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).context("serialising JSON")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(diff(Some(5.0), None), None);
    }
}
