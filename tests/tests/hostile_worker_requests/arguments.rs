//! Hostile compile arguments with the system gcc (a toolchain the worker holds): `-wrapper`,
//! `-B`, `-fplugin=`, `-iplugindir=`, `-specs=`, and response files (`@/etc/passwd`, one that
//! smuggles a `-wrapper` in). Each attack is first shown to work with the local gcc.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use discomy_protocol::{Digest, RefusalKind, Response};
use discomy_tests::clean_command;

use crate::client::{Client, compile_request, describe, strings, worker_with_system_gcc};

/// Runs the local gcc with `args` on a small file in `dir` (the attack works here).
fn run_local_gcc(dir: &Path, args: &[String]) -> std::process::Output {
    let source = dir.join("local.c");
    fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    clean_command("gcc")
        .current_dir(dir)
        .args(args)
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(dir.join("local.o"))
        .output()
        .unwrap()
}

/// A gcc plugin whose `plugin_init` creates `marker`.
fn build_marker_plugin(dir: &Path, marker: &Path) -> PathBuf {
    let source = dir.join("evilplugin.cc");
    fs::write(
        &source,
        format!(
            "#include <cstdio>\nextern \"C\" {{\nint plugin_is_GPL_compatible;\n\
             int plugin_init(void *, void *) {{\n  std::FILE *f = std::fopen({:?}, \"w\");\n  \
             if (f) std::fclose(f);\n  return 0;\n}}\n}}\n",
            marker.to_str().unwrap()
        ),
    )
    .unwrap();
    let plugin = dir.join("evilplugin.so");
    let out = clean_command("g++")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&plugin)
        .arg(&source)
        .output()
        .unwrap();
    assert!(out.status.success(), "g++ plugin: {}", String::from_utf8_lossy(&out.stderr));
    plugin
}

#[test]
fn hostile_arguments_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().unwrap();
    let (mut worker, mut client, identity, unit) = worker_with_system_gcc(&dir);

    let marker = |what: &str| dir.join(format!("marker-{what}"));
    let plugin = build_marker_plugin(&dir, &marker("plugin"));
    let bdir = dir.join("bdir");
    fs::create_dir(&bdir).unwrap();
    let fake_cc1 = bdir.join("cc1");
    fs::write(&fake_cc1, format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker("b").display()))
        .unwrap();
    fs::set_permissions(&fake_cc1, fs::Permissions::from_mode(0o755)).unwrap();
    let specs = dir.join("evil.specs");
    fs::write(&specs, format!("*cc1_options:\n+ -fplugin={}\n", plugin.display())).unwrap();

    let attacks: Vec<(&str, Vec<String>, PathBuf)> = vec![
        (
            "-wrapper",
            vec![
                "-O2".into(),
                "-wrapper".into(),
                format!("/bin/sh,-c,touch {}", marker("wrapper").display()),
            ],
            marker("wrapper"),
        ),
        ("-B", vec!["-O2".into(), format!("-B{}/", bdir.display())], marker("b")),
        (
            "-fplugin=",
            vec!["-O2".into(), format!("-fplugin={}", plugin.display())],
            marker("plugin"),
        ),
        (
            "-iplugindir=",
            vec![
                "-O2".into(),
                format!("-iplugindir={}", dir.display()),
                "-fplugin=evilplugin".into(),
            ],
            marker("plugin"),
        ),
        ("-specs=", vec!["-O2".into(), format!("-specs={}", specs.display())], marker("plugin")),
    ];

    let mut problems = Vec::new();
    for (name, args, marker) in &attacks {
        // The attack is real: the local gcc runs it.
        let _ = fs::remove_file(marker);
        let local = run_local_gcc(&dir, args);
        assert!(
            marker.exists(),
            "{name}: the local gcc did not create {} ({}), so the attack proves nothing:\n{}",
            marker.display(),
            local.status,
            String::from_utf8_lossy(&local.stderr)
        );
        fs::remove_file(marker).unwrap();

        let response = client.call(&compile_request(identity, "gcc", args, &unit));
        eprintln!("[e2e] {name}: {}", describe(&response));
        match &response {
            Response::Refused(r) if r.kind == RefusalKind::BadArguments => {}
            other => problems.push(format!(
                "{name} {args:?}: expected Refused(BadArguments), got {}",
                describe(other)
            )),
        }
        if marker.exists() {
            problems.push(format!("{name}: the worker created {}", marker.display()));
        }
        client.ping(name);
    }
    Client::connect(worker.addr).ping("the hostile arguments (new connection)");
    assert!(worker.proc.try_wait().is_none(), "the worker died");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn response_files_are_refused_and_not_leaked() {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    assert!(passwd.contains("root:"), "/etc/passwd has no root entry: the check would be vacuous");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().unwrap();
    let (mut worker, mut client, identity, unit) = worker_with_system_gcc(&dir);

    // The attack is real: gcc reads the file and echoes its words in its errors.
    let local = run_local_gcc(&dir, &strings(&["@/etc/passwd"]));
    assert!(
        String::from_utf8_lossy(&local.stderr).contains("root:"),
        "the local gcc did not leak /etc/passwd: {}",
        String::from_utf8_lossy(&local.stderr)
    );
    // A response file that smuggles a -wrapper in.
    let marker = dir.join("marker-rsp");
    let rsp = dir.join("args.rsp");
    fs::write(&rsp, format!("-wrapper /bin/sh,-c,'touch {}'\n", marker.display())).unwrap();
    let rsp_arg = format!("@{}", rsp.display());
    let _ = run_local_gcc(&dir, std::slice::from_ref(&rsp_arg));
    assert!(marker.exists(), "the local gcc did not follow the response file");
    fs::remove_file(&marker).unwrap();

    let unknown = Digest::of(b"a toolchain no worker holds");
    let cases: Vec<(Digest, Vec<String>)> = vec![
        (identity, strings(&["@/etc/passwd"])),
        (identity, strings(&["-O2", "@/etc/passwd"])),
        (identity, strings(&["-Xassembler", "@/etc/passwd"])),
        (identity, strings(&["-Wa,@/etc/passwd"])),
        (identity, vec!["-O2".into(), rsp_arg.clone()]),
        (unknown, strings(&["@/etc/passwd"])),
    ];
    let mut problems = Vec::new();
    for (id, args) in &cases {
        let what =
            format!("{args:?} (identity {})", if *id == identity { "held" } else { "unknown" });
        let (body, response) = client.call_raw(&compile_request(*id, "gcc", args, &unit));
        let text = describe(&response);
        eprintln!("[e2e] {what}: {text}");
        let refused_as_expected = match &response {
            Response::Refused(r) if *id == identity => r.kind == RefusalKind::BadArguments,
            Response::Refused(_) => true,
            _ => false,
        };
        if !refused_as_expected {
            problems.push(format!("{what}: expected a BadArguments refusal, got {text}"));
        }
        if text.contains("root:") || body.windows(5).any(|w| w == b"root:") {
            problems.push(format!("{what}: the reply leaks /etc/passwd: {text}"));
        }
        if marker.exists() {
            problems.push(format!("{what}: the worker created {}", marker.display()));
        }
        client.ping(&what);
    }
    Client::connect(worker.addr).ping("the response files (new connection)");
    assert!(worker.proc.try_wait().is_none(), "the worker died");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
