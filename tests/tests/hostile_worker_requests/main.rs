//! Requests a hostile client sends straight to a worker over TCP, with the synchronous protocol
//! API: compile arguments that would run programs or read host files (`-wrapper`, `-B`,
//! `-fplugin=`/`-specs=`/`-iplugindir=` outside the toolchain, `@/etc/passwd`), and a hostile
//! *toolchain* whose "compiler" is a dash script that tries to write outside its directory, read
//! host files, reach the network, burn CPU, fork-bomb and exhaust memory, plus manifests whose
//! symlinks point a file out of the tree.
//!
//! Every attack is first shown to work against the local gcc where that makes sense (so a refusal
//! means something). On the worker each one is refused or confined, nothing reaches the host, and
//! after each one the worker still answers `Ping` with `Pong` on the same connection.
//!
//! One test binary, by attack family: `arguments` (hostile compile arguments and response files),
//! `toolchain` (the hostile toolchain, built by `evil_toolchain`) and `source_mode` (hostile
//! source-mode units); `client` is the client side of the wire they all share.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod arguments;
mod client;
mod evil_toolchain;
mod host_mode;
mod source_mode;
mod toolchain;
