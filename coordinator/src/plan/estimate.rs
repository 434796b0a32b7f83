//! Costs of packages: estimated from source size and language for packages never built, and
//! taken from recorded history (the build queue's finished jobs) for the others. Every
//! estimate is marked as one ([`CostSource::Estimate`]).
//!
//! The constants come from the Lua 5.4 trace shipped in `bench/traces/` (gcc -O2 on the
//! recording host: 14.7 µs of compiler CPU per byte of C source, 1.8 bytes of compiled source
//! per byte of `.orig.tar.gz`, 330 kB preprocessed and 16 kB of object per unit); the factors
//! for other languages are rough rules of thumb, and say so in the report.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::workload::{CostSource, Package};

/// Compiler CPU seconds per byte of C source (gcc -O2, the Lua trace).
pub const C_CPU_S_PER_BYTE: f64 = 14.7e-6;
/// Compiled source bytes per byte of compressed tarball (the Lua trace: 663 kB from 361 kB).
pub const COMPILED_PER_TAR_BYTE: f64 = 1.8;
/// Tarball assumed when a package's size is unknown.
pub const DEFAULT_TAR_BYTES: u64 = 1 << 20;
/// Main-file bytes per compile unit (the Lua trace: 20 kB).
pub const SOURCE_BYTES_PER_UNIT: f64 = 20_000.0;
/// Serial share of a package's build measured only as a wall time (configure, link, tests,
/// packaging) when the history says nothing finer.
pub const HISTORY_SERIAL_SHARE: f64 = 0.25;

/// A package's main compiled language, as far as its build dependencies tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// C (the default).
    #[default]
    C,
    /// C++ (Qt, Boost, LLVM build dependencies).
    Cxx,
    /// Rust (cargo, rustc).
    Rust,
    /// Go.
    Go,
    /// Fortran.
    Fortran,
    /// Nothing compiled to speak of (Python, Perl, Java, data, documentation).
    Script,
}

impl Language {
    /// Compiler CPU relative to C per byte of source.
    pub fn cpu_factor(self) -> f64 {
        match self {
            Language::C => 1.0,
            Language::Cxx => 4.0,
            Language::Rust => 3.0,
            Language::Go => 0.3,
            Language::Fortran => 1.5,
            Language::Script => 0.05,
        }
    }

    /// Preprocessed bytes shipped per unit.
    pub fn bytes_in_per_unit(self) -> u64 {
        match self {
            Language::Cxx => 1_500_000,
            _ => 330_000,
        }
    }

    /// Guesses from Debian build dependencies (binary package names).
    pub fn from_debian_build_deps(deps: &[&str]) -> Language {
        let has = |p: &dyn Fn(&str) -> bool| deps.iter().any(|d| p(d));
        if has(&|d| d == "cargo" || d == "rustc" || d == "dh-cargo") {
            Language::Rust
        } else if has(&|d| d.starts_with("golang-go") || d == "dh-golang") {
            Language::Go
        } else if has(&|d| {
            d.starts_with("qt") || d.starts_with("libboost") || d.starts_with("llvm") || d == "g++"
        }) {
            Language::Cxx
        } else if has(&|d| d == "gfortran") {
            Language::Fortran
        } else if has(&|d| {
            d == "dh-python" || d.starts_with("python3") || d == "default-jdk" || d == "perl"
        }) && !has(&|d| d.ends_with("-dev") && !d.starts_with("python3"))
        {
            Language::Script
        } else {
            Language::C
        }
    }
}

/// How a package configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildSystem {
    /// Plain make, or unknown.
    #[default]
    Make,
    /// Autotools (`./configure`: slow, serial).
    Autotools,
    /// CMake.
    Cmake,
    /// Meson.
    Meson,
}

impl BuildSystem {
    /// Serial configure seconds assumed.
    pub fn configure_s(self) -> f64 {
        match self {
            BuildSystem::Make => 2.0,
            BuildSystem::Autotools => 25.0,
            BuildSystem::Cmake => 10.0,
            BuildSystem::Meson => 5.0,
        }
    }

    /// Guesses from Debian build dependencies.
    pub fn from_debian_build_deps(deps: &[&str]) -> BuildSystem {
        if deps.iter().any(|d| d.starts_with("cmake")) {
            BuildSystem::Cmake
        } else if deps.contains(&"meson") {
            BuildSystem::Meson
        } else if deps.iter().any(|d| d.starts_with("autoconf") || d.starts_with("dh-autoreconf")) {
            BuildSystem::Autotools
        } else {
            BuildSystem::Make
        }
    }
}

/// What is known of a package's sources.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceFacts {
    /// Compressed tarball bytes.
    pub tar_bytes: Option<u64>,
    /// Main language.
    pub language: Language,
    /// Build system.
    pub build_system: BuildSystem,
}

/// A package never built: costs from its source size and language (marked as an estimate).
pub fn estimate(name: &str, deps: Vec<String>, facts: &SourceFacts) -> Package {
    let tar = facts.tar_bytes.unwrap_or(DEFAULT_TAR_BYTES).min(1 << 36);
    let source = tar as f64 * COMPILED_PER_TAR_BYTE;
    let cpu =
        (source * C_CPU_S_PER_BYTE * facts.language.cpu_factor()).min(super::workload::MAX_CPU_S);
    let units =
        ((source / SOURCE_BYTES_PER_UNIT).ceil() as u32).clamp(1, super::workload::MAX_UNITS);
    Package {
        name: name.to_string(),
        deps,
        compile_cpu_s: cpu,
        units,
        configure_s: facts.build_system.configure_s(),
        // The link, the tests and packaging: a quarter of the compile work, and 10 s.
        serial_s: (10.0 + 0.25 * cpu).min(super::workload::MAX_CPU_S),
        bytes_in_per_unit: facts.language.bytes_in_per_unit(),
        bytes_out_per_unit: 16_000,
        artefact_bytes: (tar as f64 * 1.5) as u64 + 200_000,
        jobs: 0,
        cost: CostSource::Estimate,
    }
}

/// A finished build from the queue's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Package name (the job's name).
    pub name: String,
    /// Seconds from running to succeeded (the latest successful attempt).
    pub wall_s: f64,
    /// Its serial part (configure, link, tests), when the recorder measured it; otherwise
    /// [`HISTORY_SERIAL_SHARE`] of the wall time.
    #[serde(default)]
    pub serial_s: Option<f64>,
    /// Bytes of its artefacts.
    #[serde(default)]
    pub artefact_bytes: u64,
}

/// Each package's latest record (a later record of a name replaces an earlier one), indexed
/// once so that looking packages up is not a scan of the history per package.
pub fn latest_records(records: &[HistoryRecord]) -> HashMap<&str, &HistoryRecord> {
    records.iter().map(|r| (r.name.as_str(), r)).collect()
}

/// Replaces a package's figures by its history (its record in [`latest_records`]): the wall
/// time split into the serial part (measured, or [`HISTORY_SERIAL_SHARE`]) and compile work
/// that ran `jobs` wide on its builder (no wider than its units). Returns whether a record
/// applied.
pub fn apply_history(p: &mut Package, latest: &HashMap<&str, &HistoryRecord>, jobs: u32) -> bool {
    let Some(r) = latest.get(p.name.as_str()) else { return false };
    if !(r.wall_s.is_finite() && r.wall_s > 0.0 && r.wall_s < super::workload::MAX_CPU_S) {
        return false;
    }
    match r.serial_s {
        Some(s) if s.is_finite() && s >= 0.0 => {
            p.configure_s = 0.0;
            p.serial_s = s.min(r.wall_s);
        }
        _ => {
            p.configure_s = r.wall_s * HISTORY_SERIAL_SHARE / 2.0;
            p.serial_s = r.wall_s * HISTORY_SERIAL_SHARE / 2.0;
        }
    }
    let width = if p.units > 0 { jobs.clamp(1, p.units) } else { jobs.max(1) };
    p.compile_cpu_s = (r.wall_s - p.configure_s - p.serial_s) * f64::from(width);
    p.units = p.units.max(width);
    if r.artefact_bytes > 0 {
        p.artefact_bytes = r.artefact_bytes;
    }
    p.cost = CostSource::History;
    true
}
