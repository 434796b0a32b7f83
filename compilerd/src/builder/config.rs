//! The builder's configuration file (TOML), read and checked once at start: every problem is a
//! [`ConfigError`] naming the field, before anything runs.
//!
//! ```toml
//! name = "builder-1"
//! api = "http://coordinator:3635"    # https://… for a working fleet's coordinator
//! token_file = "/etc/discomy/token"   # or env DISCOMY_TOKEN; never the command line
//! ca_file = "/var/lib/discomy/fleet/ca.pem"  # optional: the farm CA for an https api
//!                                     # (else the daemon's --fleet-dir: its ca.pem and node.pem)
//! work_dir = "/var/lib/discomy/builder"
//! slots = 2
//! arches = ["x86_64"]                 # default: the host's
//! memory_limit = "8G"                 # per build (bytes or K/M/G/T)
//! cpus = 4                            # per build
//! report_every = 5                    # seconds
//! keep_work = false
//! metrics_listen = "127.0.0.1:9102"   # optional: Prometheus metrics at /metrics
//!
//! [farm]                              # optional: each build's compiles go to the farm
//! socket_dir = "/run/discomy"
//! libexec_dir = "/usr/libexec/discomy"
//! smp_ncpus = 16
//!
//! [[chroot]]
//! name = "rocky-9"
//! root = "/var/lib/discomy/chroots/rocky-9"
//! nodeps = false                      # rpmbuild --nodeps (chroots without an RPM database)
//! install = { "/etc/rpm/macros.el9" = "/usr/share/discomy/el9/macros.el9" }
//! macros = { dist = ".el9" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the runner is installed.
pub const DEFAULT_RUNNER: &str = "/usr/libexec/discomy/chroot-run.sh";
/// The environment variable holding the farm token when no `token_file` is set.
pub const TOKEN_ENV: &str = "DISCOMY_TOKEN";

/// Why the configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not TOML, or not this format.
    #[error("{0}")]
    Parse(String),
    /// A field's value is wrong.
    #[error("{field}: {why}")]
    Invalid {
        /// The field (`chroot[rocky-9].root`, …).
        field: String,
        /// What is wrong.
        why: String,
    },
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), why: why.into() }
}

/// Farm use: each build runs with discomy applied (`chroot-run.sh --discomy`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FarmConfig {
    /// The agent's socket directory, mounted at `/run/discomy`.
    pub socket_dir: PathBuf,
    /// The masquerade directory, mounted at `/usr/libexec/discomy`.
    pub libexec_dir: PathBuf,
    /// `%_smp_build_ncpus`: the farm's slots.
    pub smp_ncpus: u32,
}

/// A chroot builds can run in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChrootConfig {
    /// Its name, as jobs' targets say.
    pub name: String,
    /// A prepared tree with rpmbuild (never written: each build runs in an overlay).
    pub root: PathBuf,
    /// Host files copied in before the build: chroot path → host file.
    #[serde(default)]
    pub install: BTreeMap<String, PathBuf>,
    /// rpm macros for every build (name without `%` → value).
    #[serde(default)]
    pub macros: BTreeMap<String, String>,
    /// `rpmbuild --nodeps` (a chroot without an RPM database of its build dependencies).
    #[serde(default)]
    pub nodeps: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: String,
    api: String,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    work_dir: PathBuf,
    #[serde(default = "one")]
    slots: u32,
    arches: Option<Vec<String>>,
    memory_limit: Option<SizeSpec>,
    cpus: Option<f64>,
    runner: Option<PathBuf>,
    report_every: Option<f64>,
    #[serde(default)]
    keep_work: bool,
    metrics_listen: Option<std::net::SocketAddr>,
    farm: Option<FarmConfig>,
    #[serde(default)]
    chroot: Vec<ChrootConfig>,
}

fn one() -> u32 {
    1
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The builder's name in the farm.
    pub name: String,
    /// The coordinator's API (`http://host:port`).
    pub api: String,
    /// The farm token (from `token_file` or `DISCOMY_TOKEN`).
    pub token: Option<String>,
    /// The farm CA that verifies an `https://` API (`ca_file`).
    pub ca_file: Option<PathBuf>,
    /// The daemon's fleet directory (`--fleet-dir`, not in the file): its `ca.pem` verifies an
    /// `https://` API when no `ca_file` is given, and its `node.pem` is shown.
    pub fleet_dir: Option<PathBuf>,
    /// Where jobs' work directories go (made at start, mode 0700).
    pub work_dir: PathBuf,
    /// Builds at once.
    pub slots: u32,
    /// Architectures built for.
    pub arches: Vec<String>,
    /// Memory per build, in bytes (the cgroup limit).
    pub memory_limit: Option<u64>,
    /// CPUs per build (the cgroup quota).
    pub cpus: Option<f64>,
    /// `chroot-run.sh`.
    pub runner: PathBuf,
    /// How often to report.
    pub report_every: Duration,
    /// Keep jobs' work directories (debugging).
    pub keep_work: bool,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Farm use.
    pub farm: Option<FarmConfig>,
    /// The chroots.
    pub chroots: Vec<ChrootConfig>,
}

impl Config {
    /// Reads and checks the file at `path` (the token from `DISCOMY_TOKEN` when it names no
    /// `token_file`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let env_token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        Config::parse(&text, env_token).map_err(|e| match e {
            ConfigError::Parse(why) => ConfigError::Parse(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    /// Checks configuration text; `env_token` is used when no `token_file` is named.
    pub fn parse(text: &str, env_token: Option<String>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if !is_plain_name(&raw.name) {
            return Err(invalid("name", "letters, digits, '.', '_', '-' only (1-64)"));
        }
        check_api(&raw.api)?;
        let token = match &raw.token_file {
            Some(file) => Some(
                discomy_protocol::plumbing::secret::read_token_file(file)
                    .map_err(|e| invalid("token_file", e.to_string()))?,
            ),
            None => env_token,
        };
        if !raw.work_dir.is_absolute() || raw.work_dir.to_string_lossy().contains(['=', '\n']) {
            return Err(invalid(
                "work_dir",
                "must be an absolute path without '=' or a line break",
            ));
        }
        match raw.work_dir.parent() {
            Some(parent) if parent.is_dir() => {}
            _ => return Err(invalid("work_dir", "its parent directory does not exist")),
        }
        if !(1..=256).contains(&raw.slots) {
            return Err(invalid("slots", "must be 1 to 256"));
        }
        let arches = match raw.arches {
            Some(arches) if arches.is_empty() => return Err(invalid("arches", "empty list")),
            Some(arches) => arches,
            None => vec![host_arch().to_owned()],
        };
        if let Some(bad) = arches.iter().find(|a| !is_plain_name(a)) {
            return Err(invalid("arches", format!("{bad:?} is not a plain name")));
        }
        let memory_limit = match raw.memory_limit {
            None => None,
            Some(SizeSpec::Bytes(n)) => Some(n),
            Some(SizeSpec::Text(t)) => Some(parse_size(&t).ok_or_else(|| {
                invalid("memory_limit", format!("{t:?}: bytes or a number with K, M, G or T"))
            })?),
        };
        if memory_limit.is_some_and(|m| m < 64 << 20) {
            return Err(invalid("memory_limit", "less than 64 MiB cannot build anything"));
        }
        if let Some(cpus) = raw.cpus
            && !(cpus.is_finite() && (0.01..=4096.0).contains(&cpus))
        {
            return Err(invalid("cpus", "must be between 0.01 and 4096"));
        }
        let runner = raw.runner.unwrap_or_else(|| PathBuf::from(DEFAULT_RUNNER));
        if !runner.is_file() {
            return Err(invalid("runner", format!("{} is not a file", runner.display())));
        }
        let report_every = raw.report_every.unwrap_or(5.0);
        if !(report_every.is_finite() && (0.1..=300.0).contains(&report_every)) {
            return Err(invalid("report_every", "must be between 0.1 and 300 seconds"));
        }
        if let Some(farm) = &raw.farm {
            for (field, dir) in
                [("farm.socket_dir", &farm.socket_dir), ("farm.libexec_dir", &farm.libexec_dir)]
            {
                if !dir.is_absolute() || !dir.is_dir() {
                    return Err(invalid(
                        field,
                        format!("{} is not an existing absolute directory", dir.display()),
                    ));
                }
            }
            if !(1..=4096).contains(&farm.smp_ncpus) {
                return Err(invalid("farm.smp_ncpus", "must be 1 to 4096"));
            }
        }
        if raw.chroot.is_empty() {
            return Err(invalid("chroot", "at least one [[chroot]] is needed"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for chroot in &raw.chroot {
            check_chroot(chroot)?;
            if !seen.insert(chroot.name.as_str()) {
                return Err(invalid(format!("chroot[{}]", chroot.name), "named twice"));
            }
        }
        Ok(Config {
            name: raw.name,
            api: raw.api,
            token,
            ca_file: raw.ca_file,
            fleet_dir: None,
            work_dir: raw.work_dir,
            slots: raw.slots,
            arches,
            memory_limit,
            cpus: raw.cpus,
            runner,
            report_every: Duration::from_secs_f64(report_every),
            keep_work: raw.keep_work,
            metrics_listen: raw.metrics_listen,
            farm: raw.farm,
            chroots: raw.chroot,
        })
    }

    /// The chroot named `name`.
    pub fn chroot(&self, name: &str) -> Option<&ChrootConfig> {
        self.chroots.iter().find(|c| c.name == name)
    }
}

fn check_api(api: &str) -> Result<(), ConfigError> {
    // The URL's shape only: whether an https API has a CA is known once `--fleet-dir` is.
    let shape = match api.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => api.to_owned(),
    };
    crate::coord::api::ApiClient::new(&shape, None)
        .map(drop)
        .map_err(|e| invalid("api", e.to_string()))
}

fn check_chroot(chroot: &ChrootConfig) -> Result<(), ConfigError> {
    let field = |f: &str| format!("chroot[{}].{f}", chroot.name);
    if !is_plain_name(&chroot.name) {
        return Err(invalid(format!("chroot[{:?}].name", chroot.name), "not a plain name"));
    }
    if !chroot.root.is_absolute() || !chroot.root.join("usr/bin/rpmbuild").exists() {
        return Err(invalid(
            field("root"),
            format!(
                "{} is not an absolute path to a tree with usr/bin/rpmbuild",
                chroot.root.display()
            ),
        ));
    }
    for (inside, host) in &chroot.install {
        let safe = inside.starts_with('/')
            && !inside.ends_with('/')
            && inside.split('/').all(|c| c != ".." && c != ".")
            && !inside.contains(['=', '\n', '\0']);
        if !safe {
            return Err(invalid(
                field("install"),
                format!("{inside:?}: an absolute chroot path without '..' or '='"),
            ));
        }
        let host_text = host.to_string_lossy();
        if !host.is_absolute() || !host.is_file() || host_text.contains(['=', '\n']) {
            return Err(invalid(
                field("install"),
                format!("{}: not an existing absolute file (without '=')", host.display()),
            ));
        }
    }
    for (name, value) in &chroot.macros {
        let name_ok = !name.is_empty()
            && name.trim_start_matches('%').bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok || value.contains(['\n', '\0']) {
            return Err(invalid(
                field("macros"),
                format!("{name:?}: a macro name and a one-line value"),
            ));
        }
    }
    Ok(())
}

/// A name safe in paths, arguments and cgroup names: 1-64 of `[A-Za-z0-9._-]`, not starting with
/// `.` or `-`.
pub fn is_plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `4G`, `512M`, `4GiB`, `1073741824`: bytes (K/M/G/T are powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 10),
        (i, 'M' | 'm') => (&t[..i], 20),
        (i, 'G' | 'g') => (&t[..i], 30),
        (i, 'T' | 't') => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// The host's architecture, as rpm names it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "powerpc64" => "ppc64le",
        "x86" => "i686",
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn base(dir: &Path, extra: &str) -> String {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/rpmbuild"), "").unwrap();
        std::fs::write(dir.join("runner.sh"), "").unwrap();
        std::fs::write(dir.join("macros"), "").unwrap();
        format!(
            "name = \"b1\"\napi = \"http://127.0.0.1:3635\"\nwork_dir = \"{d}/work\"\n\
             runner = \"{d}/runner.sh\"\n{extra}\n[[chroot]]\nname = \"rocky-9\"\nroot = \"{d}/root\"\n\
             install = {{ \"/etc/rpm/macros.el9\" = \"{d}/macros\" }}\n",
            d = dir.display()
        )
    }

    #[test]
    fn a_good_file_is_read_with_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let c =
            Config::parse(&base(tmp.path(), "memory_limit = \"4G\"\ncpus = 2"), Some("t".into()))
                .unwrap();
        assert_eq!(c.slots, 1);
        assert_eq!(c.memory_limit, Some(4 << 30));
        assert_eq!(c.cpus, Some(2.0));
        assert_eq!(c.arches, [host_arch()]);
        assert_eq!(c.token.as_deref(), Some("t"));
        assert_eq!(c.report_every, Duration::from_secs(5));
        assert!(c.chroot("rocky-9").is_some());
        std::fs::write(tmp.path().join("tok"), "secret\n").unwrap();
        let text =
            format!("token_file = \"{}/tok\"\nmemory_limit = 1073741824", tmp.path().display());
        let c = Config::parse(&base(tmp.path(), &text), Some("env".into())).unwrap();
        assert_eq!(c.token.as_deref(), Some("secret"));
        assert_eq!(c.memory_limit, Some(1 << 30));
    }

    #[test]
    fn bad_files_name_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().display().to_string();
        let cases = [
            ("slots = 0", "slots"),
            ("memory_limit = \"lots\"", "memory_limit"),
            ("cpus = -1", "cpus"),
            ("arches = []", "arches"),
            ("arches = [\"x86/64\"]", "arches"),
            ("report_every = 0", "report_every"),
            ("runner = \"/nonexistent/run.sh\"", "runner"),
            ("token_file = \"/nonexistent/token\"", "token_file"),
            (
                "[farm]\nsocket_dir = \"/nonexistent\"\nlibexec_dir = \"/\"\nsmp_ncpus = 4",
                "farm.socket_dir",
            ),
        ];
        for (extra, field) in cases {
            let text = base(tmp.path(), extra).replacen(
                &format!("runner = \"{d}/runner.sh\"\n"),
                "",
                usize::from(extra.starts_with("runner")),
            );
            match Config::parse(&text, None) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
        let good = base(tmp.path(), "");
        for (from, to, field) in [
            ("name = \"b1\"", "name = \"b 1\"", "name"),
            ("http://127.0.0.1:3635", "ftp://x", "api"),
            ("http://127.0.0.1:3635", "https://x/path", "api"),
            ("name = \"rocky-9\"", "name = \"../x\"", "chroot[\"../x\"].name"),
            (&format!("root = \"{d}/root\""), "root = \"/nonexistent\"", "chroot[rocky-9].root"),
            ("\"/etc/rpm/macros.el9\"", "\"/etc/../x\"", "chroot[rocky-9].install"),
            (&format!("\"{d}/macros\""), "\"/nonexistent\"", "chroot[rocky-9].install"),
        ] {
            match Config::parse(&good.replace(from, to), None) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{to}"),
                other => panic!("{to}: {other:?}"),
            }
        }
        // An https API parses; its CA (`ca_file`, or the daemon's --fleet-dir) is read at start.
        let https = good.replace("http://127.0.0.1:3635", "https://coord.example:3635");
        let https = https.replacen("\n", "\nca_file = \"/etc/discomy/ca.pem\"\n", 1);
        let parsed = Config::parse(&https, None).unwrap();
        assert_eq!(parsed.ca_file.as_deref(), Some(Path::new("/etc/discomy/ca.pem")));
        assert!(matches!(
            Config::parse(&format!("{good}\nbogus = 1"), None),
            Err(ConfigError::Parse(_))
        ));
        let twice = format!("{good}[[chroot]]\nname = \"rocky-9\"\nroot = \"{d}/root\"\n");
        assert!(matches!(Config::parse(&twice, None), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
