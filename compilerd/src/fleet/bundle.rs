//! The provisioning bundle (the "disco playlist"): `discomy nodes bundle NAME` writes everything
//! a donor host needs to join the fleet into one directory:
//! - `join.sh`: runs the two scripts below with this bundle's values;
//! - `scripts/install.sh`, `scripts/configure.sh` and the `rpm/` files install.sh installs
//!   (systemd units, sysusers, configuration, Rocky 9 macros, mock snippet), embedded in this
//!   binary so the bundle matches the binaries' version;
//! - `fleet/ca.pem` (the farm CA), `fleet/join-token` (0600, single-use by default) and
//!   `fleet/bundle.env` (coordinator, node name, roles).
//!
//! The host brings the binaries (`join.sh --from DIR`) or already has them installed.

use std::path::{Path, PathBuf};

use discomy_protocol::fleet::{FleetRole, valid_node_name};
use discomy_protocol::plumbing::fs::{WriteOptions, write_atomically_with};

use super::FleetError;

/// The installer tree, as in the source tree (path, content, mode).
const TREE: &[(&str, &[u8], u32)] = &[
    ("scripts/install.sh", include_bytes!("../../../scripts/install.sh"), 0o755),
    ("scripts/configure.sh", include_bytes!("../../../scripts/configure.sh"), 0o755),
    ("rpm/chroot-run.sh", include_bytes!("../../../rpm/chroot-run.sh"), 0o755),
    ("rpm/discomy.sysusers", include_bytes!("../../../rpm/discomy.sysusers"), 0o644),
    ("rpm/el9/macros.el9", include_bytes!("../../../rpm/el9/macros.el9"), 0o644),
    ("rpm/el9/redhat-hardened-cc1", include_bytes!("../../../rpm/el9/redhat-hardened-cc1"), 0o644),
    ("rpm/el9/redhat-hardened-ld", include_bytes!("../../../rpm/el9/redhat-hardened-ld"), 0o644),
    ("rpm/el9/rpmrc", include_bytes!("../../../rpm/el9/rpmrc"), 0o644),
    ("rpm/etc/agent.env", include_bytes!("../../../rpm/etc/agent.env"), 0o644),
    ("rpm/etc/builder.env", include_bytes!("../../../rpm/etc/builder.env"), 0o644),
    ("rpm/etc/builder.toml", include_bytes!("../../../rpm/etc/builder.toml"), 0o644),
    ("rpm/etc/coordinator.env", include_bytes!("../../../rpm/etc/coordinator.env"), 0o644),
    ("rpm/etc/coordinator.toml", include_bytes!("../../../rpm/etc/coordinator.toml"), 0o644),
    ("rpm/etc/worker.env", include_bytes!("../../../rpm/etc/worker.env"), 0o644),
    ("rpm/mock/discomy.cfg", include_bytes!("../../../rpm/mock/discomy.cfg"), 0o644),
    ("rpm/mock/discomy/profile.sh", include_bytes!("../../../rpm/mock/discomy/profile.sh"), 0o644),
    ("rpm/mock/discomy/settings", include_bytes!("../../../rpm/mock/discomy/settings"), 0o644),
    (
        "rpm/systemd/discomy-agent.service",
        include_bytes!("../../../rpm/systemd/discomy-agent.service"),
        0o644,
    ),
    (
        "rpm/systemd/discomy-builder.service",
        include_bytes!("../../../rpm/systemd/discomy-builder.service"),
        0o644,
    ),
    (
        "rpm/systemd/discomy-coordinator.service",
        include_bytes!("../../../rpm/systemd/discomy-coordinator.service"),
        0o644,
    ),
    (
        "rpm/systemd/discomy-worker.service",
        include_bytes!("../../../rpm/systemd/discomy-worker.service"),
        0o644,
    ),
];

const JOIN_SH: &str = r#"#!/usr/bin/env bash
# Joins this host to the discomy fleet named in fleet/bundle.env: installs discomy (with --from
# DIR, the directory of its five binaries; skipped when discomy is installed already and no
# --from is given), then configures the roles of fleet/bundle.env with this bundle's join token
# and farm CA. The host waits as pending until the operator runs `discomy nodes approve`; run
# this again then (or give --wait-approval SECS) and its daemons start.
# Usage: join.sh [--from DIR] [--wait-approval SECS] [--no-systemd] [other configure.sh flags]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=/dev/null
. "$here/fleet/bundle.env"
from="" rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --from) [ $# -ge 2 ] || { echo "join.sh: --from needs a directory" >&2; exit 1; }; from=$2; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
if [ -n "$from" ]; then
  bash "$here/scripts/install.sh" --from "$from"
elif ! command -v discomy-compilerd >/dev/null; then
  echo "join.sh: discomy is not installed here: give --from DIR (its binaries)" >&2
  exit 1
fi
exec bash "$here/scripts/configure.sh" --role "$ROLES" --coordinator "$COORDINATOR" \
  --join-token-file "$here/fleet/join-token" --ca "$here/fleet/ca.pem" --node-name "$NODE_NAME" \
  ${ORGANISATION:+--organisation "$ORGANISATION"} ${CONTACT:+--contact "$CONTACT"} "${rest[@]}"
"#;

/// What goes into a bundle.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// The node's name.
    pub name: String,
    /// The roles it will ask for.
    pub roles: Vec<FleetRole>,
    /// The coordinator's address as the donor reaches it.
    pub coordinator: String,
    /// The join token.
    pub token: String,
    /// The farm CA certificate.
    pub ca_pem: String,
    /// The donating organisation and its contact, carried into the join request.
    pub organisation: String,
    /// See `organisation`.
    pub contact: String,
}

fn shell_safe(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphanumeric() || b" .,@_+:/[]-".contains(&b))
}

/// Writes the bundle into `out/NAME` (which must not exist yet); returns that directory.
pub fn write(out: &Path, spec: &BundleSpec) -> Result<PathBuf, FleetError> {
    let bad = |what: &str| FleetError::Input(what.to_string());
    if !valid_node_name(&spec.name) {
        return Err(bad("the node name is not 1-64 of A-Za-z0-9._-"));
    }
    for (what, text) in [
        ("coordinator", &spec.coordinator),
        ("organisation", &spec.organisation),
        ("contact", &spec.contact),
    ] {
        if text.len() > 128 || !shell_safe(text) {
            return Err(bad(&format!("{what}: letters, digits, spaces and .,@_+:/[]- only")));
        }
    }
    let dir = out.join(&spec.name);
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |err| FleetError::File { path, err }
    };
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    // A fresh directory: never write into one an attacker could have prepared.
    std::fs::create_dir(&dir).map_err(io_err(&dir))?;
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<(), FleetError> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let how = WriteOptions { mode: Some(mode), durable: false, keep_existing: true };
        write_atomically_with(&path, &[bytes], how).map_err(io_err(&path))
    };
    for (rel, bytes, mode) in TREE {
        put(rel, bytes, *mode)?;
    }
    put("join.sh", JOIN_SH.as_bytes(), 0o755)?;
    put("fleet/ca.pem", spec.ca_pem.as_bytes(), 0o644)?;
    put("fleet/join-token", format!("{}\n", spec.token).as_bytes(), 0o600)?;
    let roles: Vec<&str> = spec.roles.iter().map(|r| r.as_str()).collect();
    let env = format!(
        "# Written by `discomy nodes bundle`: what join.sh passes to configure.sh.\n\
         COORDINATOR='{}'\nNODE_NAME='{}'\nROLES='{}'\nORGANISATION='{}'\nCONTACT='{}'\n",
        spec.coordinator,
        spec.name,
        roles.join(","),
        spec.organisation,
        spec.contact
    );
    put("fleet/bundle.env", env.as_bytes(), 0o644)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BundleSpec {
        BundleSpec {
            name: "donor-1".into(),
            roles: vec![FleetRole::Worker],
            coordinator: "10.0.0.1:3634".into(),
            token: "ab.cd".into(),
            ca_pem: "PEM".into(),
            organisation: "Example Org".into(),
            contact: "ops@example.org".into(),
        }
    }

    #[test]
    fn a_bundle_holds_the_installer_the_ca_and_a_private_token() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = write(tmp.path(), &spec()).unwrap();
        for rel in [
            "join.sh",
            "scripts/install.sh",
            "scripts/configure.sh",
            "rpm/systemd/discomy-worker.service",
        ] {
            assert!(dir.join(rel).is_file(), "{rel}");
        }
        let mode = std::fs::metadata(dir.join("fleet/join-token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let env = std::fs::read_to_string(dir.join("fleet/bundle.env")).unwrap();
        assert!(env.contains("ROLES='worker'") && env.contains("NODE_NAME='donor-1'"), "{env}");
        // Not over an existing bundle, and nothing that could break out of the quotes.
        assert!(write(tmp.path(), &spec()).is_err());
        let quote = BundleSpec { contact: "x'; rm -rf /; '".into(), name: "d2".into(), ..spec() };
        assert!(write(tmp.path(), &quote).is_err());
    }
}
