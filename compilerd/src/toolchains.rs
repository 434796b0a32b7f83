//! The compilers a worker can run, by identity.
//!
//! At start-up the worker looks at every compiler name on its PATH (the names a masquerade
//! directory would hold), resolves each to its real driver and computes its identity with the
//! same function the wrapper uses. A unit is compiled only by a driver whose identity equals the
//! client's.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use discomy_protocol::Digest;
use discomy_wrapper::identity;
use discomy_wrapper::invocation::find_on_path;
use discomy_wrapper::names::compiler_names_on_path;
use tracing::{debug, info};

/// Identity → driver path.
#[derive(Debug, Default, Clone)]
pub struct Toolchains {
    by_identity: HashMap<Digest, PathBuf>,
    /// PATH given to compilers.
    pub path_var: OsString,
}

impl Toolchains {
    /// Scans `path_var` for compilers (blocking: hashes compiler binaries).
    pub fn discover(path_var: OsString) -> Toolchains {
        let mut by_identity = HashMap::new();
        let mut seen = Vec::new();
        for name in compiler_names_on_path(&path_var) {
            let Some(driver) =
                find_on_path(&name, &path_var, None).and_then(|p| p.canonicalize().ok())
            else {
                continue;
            };
            if seen.contains(&driver) {
                continue;
            }
            seen.push(driver.clone());
            match identity::compiler_identity(&driver, &path_var) {
                Ok(id) => {
                    debug!(%name, driver = %driver.display(), identity = %id, "compiler found");
                    by_identity.entry(id).or_insert(driver);
                }
                Err(err) => debug!(%name, %err, "compiler skipped"),
            }
        }
        info!(compilers = by_identity.len(), "toolchains discovered");
        Toolchains { by_identity, path_var }
    }

    /// The driver with this identity, if this node has one.
    pub fn driver(&self, identity: &Digest) -> Option<&PathBuf> {
        self.by_identity.get(identity)
    }

    /// How many distinct compilers this node has.
    pub fn len(&self) -> usize {
        self.by_identity.len()
    }

    /// Whether this node has no compiler at all.
    pub fn is_empty(&self) -> bool {
        self.by_identity.is_empty()
    }
}
