//! Tests of the worker's side of the sandbox helper.

use super::run::setup_message;
use super::*;

#[test]
fn status_round_trips() {
    let done = HelperStatus {
        code: Some(1),
        cpu_ms: Some(20),
        pids_max_events: 3,
        ..HelperStatus::default()
    };
    assert_eq!(HelperStatus::parse(&done.to_text()), Some(done));
    let killed = HelperStatus { signal: Some(24), ..HelperStatus::default() };
    assert_eq!(HelperStatus::parse(&killed.to_text()), Some(killed));
    let setup =
        HelperStatus { setup_error: Some("mount x:\nEPERM".into()), ..HelperStatus::default() };
    assert_eq!(
        HelperStatus::parse(&setup.to_text()).and_then(|s| s.setup_error),
        Some("mount x: EPERM".to_owned())
    );
    assert_eq!(HelperStatus::parse(""), None);
    assert_eq!(HelperStatus::parse("outcome=done\n"), None);
}

#[test]
fn command_line_keeps_the_program_after_the_separator() {
    let limits = Limits::default();
    let args = vec!["-c".to_owned(), "--root=/evil".to_owned()];
    let env = vec![("PATH".to_owned(), "/usr/bin".to_owned())];
    let spec = SandboxSpec {
        helper: Path::new("/x/discomy-sandbox"),
        root: Path::new("/t"),
        work: Path::new("/w"),
        program: "/usr/bin/gcc",
        args: &args,
        env: &env,
        limits: &limits,
        run_as: None,
        cgroup_parents: &[],
        overlay: None,
        overlay_files: None,
        cwd: None,
    };
    let line = command_line(&spec).unwrap();
    let sep = line.iter().position(|a| a == "--").unwrap();
    assert_eq!(&line[sep + 1..], ["/usr/bin/gcc", "-c", "--root=/evil"]);
    assert!(line[..sep].contains(&OsString::from("--env=PATH=/usr/bin")));
    assert!(line[..sep].contains(&OsString::from("--root=/t")));

    let relative = SandboxSpec { program: "gcc", ..spec };
    assert!(matches!(command_line(&relative), Err(SandboxError::Invalid(_))));
    let bad_env = vec![("A=B".to_owned(), "c".to_owned())];
    let bad = SandboxSpec { env: &bad_env, ..spec };
    assert!(matches!(command_line(&bad), Err(SandboxError::Invalid(_))));
}

#[test]
fn setup_messages_are_recognised() {
    assert_eq!(
        setup_message(b"gcc: note\ndiscomy-sandbox: unshare: EPERM\n"),
        Some("unshare: EPERM".to_owned())
    );
    assert_eq!(setup_message(b"gcc: error\n"), None);
}
