//! Every `DISCOMY_*` environment variable, in one table: its name, default and meaning. The
//! README's variable tables are checked against it (`protocol/tests/env_table.rs`), and so is every
//! `"DISCOMY_…"` name in the sources, so a variable cannot be added, renamed or dropped in one
//! place only.

/// One variable.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    /// Its name.
    pub name: &'static str,
    /// What it is when unset.
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
    /// Documented for users (in README.md); otherwise internal (set by discomy for its own
    /// children, or by its tests and benchmarks).
    pub user: bool,
}

/// The agent's Unix socket.
pub const SOCKET: &str = "DISCOMY_SOCKET";
/// Never distribute.
pub const DISABLE: &str = "DISCOMY_DISABLE";
/// Log filter.
pub const LOG: &str = "DISCOMY_LOG";
/// Log file of the wrapper.
pub const LOG_FILE: &str = "DISCOMY_LOG_FILE";
/// Turns mDNS discovery off.
pub const NO_MDNS: &str = "DISCOMY_NO_MDNS";
/// How units go in source mode.
pub const SOURCE_MODE: &str = "DISCOMY_SOURCE_MODE";
/// Set in the real compiler's environment so nested wrapper calls run it directly.
pub const SAFEGUARD: &str = "DISCOMY_SAFEGUARD";
/// The real `make` of an LTO link whose `MAKE` is the wrapper (LTRANS units on the farm).
pub const LTRANS_MAKE: &str = "DISCOMY_LTRANS_MAKE";
/// How many LTRANS units of one LTO link run at once, at least.
pub const LTRANS_JOBS: &str = "DISCOMY_LTRANS_JOBS";

/// The table.
pub const VARS: &[Var] = &[
    user(SOCKET, "/run/discomy/agent.sock", "the agent's socket (a directory mock can bind-mount)"),
    user(DISABLE, "unset", "1: never distribute, compile locally"),
    user(
        "DISCOMY_HOSTS",
        "the config files",
        "static host list for the agent and `discomy run` (distcc syntax)",
    ),
    user("DISCOMY_TOKEN", "none (loopback only)", "the farm token"),
    user(
        "DISCOMY_COORDINATOR",
        "mDNS discovery",
        "the coordinator's host:port, or the farm's coordinators, comma-separated",
    ),
    user("DISCOMY_FARM", "default", "the farm to discover over mDNS"),
    user(
        "DISCOMY_API",
        "http://127.0.0.1:3635",
        "the build queue API for `discomy submit` and `discomy jobs`",
    ),
    user("DISCOMY_COORDINATOR_CONFIG", "none", "the coordinator's configuration file (`--config`)"),
    user(
        "DISCOMY_METRICS_LISTEN",
        "none",
        "serve Prometheus metrics at http://ADDR/metrics (`--metrics-listen`, every daemon)",
    ),
    user(
        "DISCOMY_ICEMON_LISTEN",
        "none",
        "the coordinator's icecream monitor listener for icemon (`--icemon-listen`)",
    ),
    user(
        "DISCOMY_FLEET_DIR",
        "none",
        "the fleet directory: farm CA and certificates, mutual TLS on every link (`--fleet-dir`)",
    ),
    user("DISCOMY_JOIN_TOKEN", "none", "the join token of `discomy-compilerd join`"),
    user(NO_MDNS, "unset", "1/true/yes: no mDNS discovery"),
    user(LOG, "info (daemons), off (wrapper)", "log filter"),
    user(LOG_FILE, "stderr", "where the wrapper logs"),
    user(
        "DISCOMY_CACHE_DIR",
        "~/.cache/discomy",
        "toolchain manifests, stores and the object cache",
    ),
    user(SOURCE_MODE, "include scanner", "0: always preprocess; 1: preprocess, then source mode"),
    user("DISCOMY_CACHE", "on", "0: no object cache"),
    user("DISCOMY_CACHE_MAX", "5G", "size bound of the local cache tier"),
    user("DISCOMY_CACHE_DIRECT", "on", "0: no direct mode"),
    user("DISCOMY_CACHE_FARM", "on", "0: no farm tier"),
    user(
        "DISCOMY_VERIFY_RATE",
        "0.01",
        "the agent's fraction of remote units also compiled locally and compared",
    ),
    user(
        LTRANS_JOBS,
        "gcc's (-flto=N, or the cores for -flto=auto)",
        "LTRANS units (partitions of an LTO link) run at once on the farm, at least",
    ),
    internal(SAFEGUARD, "set for the real compiler's children: nested calls run directly"),
    internal(LTRANS_MAKE, "the real make of an LTO link whose MAKE is discomy-cc"),
    internal("DISCOMY_STATS_FILE", "`discomy run`'s per-call outcome lines"),
    internal("DISCOMY_BIN_DIR", "where `discomy run` and the tests find the binaries"),
    internal("DISCOMY_HOST_ID", "this host's id in a coordinated farm (default: the hostname)"),
    internal("DISCOMY_PROJECTS_DIR", "where tests and benchmarks find the Debian source packages"),
    internal("DISCOMY_CHROOTS_DIR", "where the rpmbuild test finds its chroot"),
    internal("DISCOMY_SIM_VERBOSE", "the simulator's trace output"),
    internal("DISCOMY_TEST", "a variable the sandbox tests pass through"),
    internal("DISCOMY_TEST_NO_ICECC", "the toolchain tests' fallback tarball"),
    internal("DISCOMY_TEST_FORGE_URL", "the forge TLS test's child process: where to post"),
    internal("DISCOMY_TEST_FORGE_EXPECT", "the forge TLS test's child process: delivered or not"),
];

const fn user(name: &'static str, default: &'static str, meaning: &'static str) -> Var {
    Var { name, default, meaning, user: true }
}

const fn internal(name: &'static str, meaning: &'static str) -> Var {
    Var { name, default: "unset", meaning, user: false }
}

/// A boolean variable: `1`, `true`, `yes`, `on` are true; `0`, `false`, `no`, `off` and the empty
/// string are false (any case); unset is `None`, anything else `Some(true)`.
pub fn flag(name: &str) -> Option<bool> {
    let value = std::env::var_os(name)?;
    let v = value.to_string_lossy().trim().to_ascii_lowercase();
    Some(!matches!(v.as_str(), "" | "0" | "false" | "no" | "off"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut names: Vec<_> = VARS.iter().map(|v| v.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
        assert!(names.iter().all(|n| n.starts_with("DISCOMY_")));
    }
}
