//! Who may use an agent's socket. Before, it was mode 0666 whatever the host: any local user
//! could submit units and read or offer cache entries with the farm's credentials. With
//! `--socket-group GROUP` it is `GROUP`'s alone (mode 0660): a user outside the group is
//! refused by the kernel, a member gets the agent's answer.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use discomy_tests::{Agent, bin, clean_command};

/// `discomy stats --json --socket SOCKET` as uid/gid 65534 (nobody), with `groups` as its
/// supplementary groups; whether it got the agent's counters, and its stderr.
fn stats_as_nobody(socket: &std::path::Path, groups: &str) -> (bool, String) {
    let mut cmd = clean_command("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534"]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.args(["--groups", groups]);
    }
    let out = cmd.arg(bin("discomy")).args(["stats", "--json", "--socket"]).arg(socket).output();
    let out = out.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn only_the_socket_group_may_use_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The socket's directory is open to everyone (as /run/discomy is): the socket decides.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let staff = 50; // Debian's `staff` group, which nobody is not in.
    let agent = Agent::start_with(dir, "agent", "", &[], &["--socket-group", "staff"]);
    let meta = std::fs::metadata(&agent.socket).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (staff, 0o660));

    let (ok, stderr) = stats_as_nobody(&agent.socket, "");
    assert!(!ok, "a user outside the group used the agent");
    assert!(stderr.contains("ermission denied"), "unclear refusal: {stderr}");
    let (ok, stderr) = stats_as_nobody(&agent.socket, &staff.to_string());
    assert!(ok, "a member of the group was refused: {stderr}");

    // `everyone` keeps the old, open socket for hosts where every user builds.
    let open = Agent::start_with(dir, "open", "", &[], &["--socket-group", "everyone"]);
    let mode = std::fs::metadata(&open.socket).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o666);
    let (ok, stderr) = stats_as_nobody(&open.socket, "");
    assert!(ok, "{stderr}");
}
