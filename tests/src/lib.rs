//! Shared helpers for discomy's end-to-end tests (see `tests/`).
//!
//! The tests run the real binaries (`discomy`, `discomy-cc`, `discomy-compilerd`) as separate
//! processes on loopback, against real gcc and a real open-source project (Lua 5.4 from its
//! Debian source package). Everything here is about running those processes safely:
//!
//! - [`Proc`]: a child process in its own process group, with stdout/stderr in log files. Its
//!   `Drop` kills the whole group (so also on panic), and prints the logs when the test panics.
//! - [`Worker`], [`Agent`], [`Farm`]: compile daemons on port 0 / a private Unix socket.
//! - [`start_coordinator`], [`farm_status`], [`wait_nodes`]: coordinators on loopback.
//! - [`extract_lua`], [`make_lua`]: the project, unpacked into a per-test temporary directory.
//! - [`objects`], [`assert_same_objects`]: byte-for-byte comparison of build outputs.
//! - [`capture`], [`diff_captures`]: one compiler invocation's exit status, output and new files.
//! - [`browser`]: headless Chromium driven over WebDriver (chromedriver), for the web UI.
//! - [`distcc`]: real `distccd`/`distcc` peers and raw distcc exchanges.
//! - [`forge`]: a forge's commit-status API on loopback, recording requests.
//! - [`netns`]: hosts as network namespaces on a private bridge.
//! - [`queue`]: the build queue: a restartable coordinator with its API, builders, `discomy jobs`.
//! - [`relay`]: a man in the middle on a worker's connections that edits its answers.
//! - [`read_stats`], [`read_summary`]: what the wrapper and `discomy run` report.
//!
//! This file owns the crate's shared timeouts and its public surface: every helper is defined in
//! a submodule (`env`: paths, binaries and clean commands; `process`: [`Proc`] and process
//! groups; `daemons`: workers and agents; `coordinators`: coordinators; `lua`: the project and its builds; `compare`: outputs
//! and leftovers; `reports`: stats files, summaries and `discomy stats`) and re-exported here, so
//! tests import everything from the crate root.

#![allow(clippy::print_stderr)] // progress and failure logs are the point of a test helper

pub mod browser;
pub mod distcc;
pub mod forge;
pub mod lto;
pub mod metrics;
pub mod netns;
pub mod queue;
pub mod relay;

mod compare;
mod coordinators;
mod daemons;
mod env;
mod lua;
mod process;
mod reports;

use std::time::Duration;

pub use compare::{
    Capture, assert_no_temp_leftovers, assert_same_objects, capture, describe_difference,
    diff_captures, file_mismatches, objects, snapshot, temp_leftovers,
};
pub use coordinators::{farm_status, node_count, start_coordinator, wait_nodes};
pub use daemons::{Agent, Farm, Worker, default_compiler_names, hosts_of};
pub use env::{
    bin, bin_dir, clean_command, free_port, or_skip, private_tmp, projects_dir, workspace_root,
};
pub use lua::{
    assert_lua_runs, discomy_run, extract_lua, lua_tarball, lua_with_reference, make_clean,
    make_lua, make_lua_with_discomy_cc, run_to_success,
};
pub use process::{Proc, ShowOnFailure, live_group_members, signal_group, tail};
pub use reports::{
    StatLine, Summary, agent_stats, outcome_counts, read_stats, read_summary, worker_stats,
};

/// How long a whole Lua build may take before the test gives up (and kills it).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a daemon may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Parallelism of the builds (`make -jN`).
pub const MAKE_JOBS: &str = "-j4";
