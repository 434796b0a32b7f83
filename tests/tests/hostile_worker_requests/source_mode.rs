//! Hostile source-mode units: the build's own command line runs on the worker, so it is checked
//! as strictly as a preprocessed unit's, and the unit's file list cannot reach outside its tree.

use std::fs;

use discomy_protocol::{
    CompilerId, Digest, Language, OutputKind, Payload, RefusalKind, Request, Response,
};
use discomy_tests::clean_command;

use crate::client::{Client, describe, strings, worker_with_system_gcc};

fn source_request(
    identity: Digest,
    args: &[String],
    cwd: &str,
    files: &[discomy_protocol::SourceFile],
) -> Request {
    Request::CompileSources(discomy_protocol::SourceCompileRequest {
        compiler: CompilerId { name: "gcc".to_owned(), identity },
        language: Language::C,
        output: OutputKind::Object,
        args: args.to_vec(),
        cwd: cwd.to_owned(),
        source_name: "plain.c".to_owned(),
        files: files.to_vec(),
        source_date_epoch: None,
        deps: None,
    })
}

#[test]
fn hostile_source_mode_requests_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().unwrap();
    let (mut worker, mut client, identity, _unit) = worker_with_system_gcc(&dir);
    let cwd = dir.to_str().unwrap().to_owned();

    // A legitimate unit first (its files as the wrapper finds them): the worker asks for the
    // files, then compiles, and the object is the local gcc's, byte for byte.
    let args = strings(&["-O2", "-g", "-c", "plain.c"]);
    let cpp = clean_command("gcc")
        .current_dir(&dir)
        .args(["-O2", "-g", "-E", "-fdirectives-only", "plain.c"])
        .output()
        .unwrap();
    assert!(cpp.status.success());
    let unit_files = discomy_wrapper::sources::collect(&cpp.stdout, &args, &cwd, &[]).unwrap();
    let files = unit_files.files.clone();
    let file = files.iter().find(|f| f.path.ends_with("/plain.c")).unwrap().clone();
    match client.call(&source_request(identity, &args, &cwd, &files)) {
        Response::MissingBlobs(blobs) => {
            assert!(blobs.contains(&file.digest), "the source is not among {blobs:?}");
            for blob in blobs {
                let content = &unit_files.contents[&blob];
                match client.call(&Request::PutSource(Payload::compress(content))) {
                    Response::Stored(d) => assert_eq!(d, blob),
                    other => panic!("PutSource: {}", describe(&other)),
                }
            }
        }
        other => panic!("expected MissingBlobs for the unit's files, got {}", describe(&other)),
    }
    let remote = match client.call(&source_request(identity, &args, &cwd, &files)) {
        Response::Compiled(r) if r.exit_code == 0 && r.stderr.is_empty() => {
            r.output.unwrap().decompress(1 << 30).unwrap()
        }
        other => panic!("a plain source-mode compile failed: {}", describe(&other)),
    };
    let local = clean_command("gcc")
        .current_dir(&dir)
        .args(["-O2", "-g", "-c", "plain.c", "-o", "local-plain.o"])
        .output()
        .unwrap();
    assert!(local.status.success());
    assert!(remote == fs::read(dir.join("local-plain.o")).unwrap(), "source-mode object differs");
    client.ping("a plain source-mode compile");

    let marker = dir.join("marker-source-wrapper");
    let with = |extra: &[&str]| {
        let mut a = strings(extra);
        a.extend(strings(&["-c", "plain.c"]));
        a
    };
    let wrapper = format!("/bin/sh,-c,touch {}", marker.display());
    let bad_args: Vec<(&str, Vec<String>)> = vec![
        ("-wrapper", with(&["-wrapper", &wrapper])),
        ("-B", with(&["-B/tmp/"])),
        ("-o", with(&["-o", "/tmp/evil.o"])),
        ("-MD -MF", with(&["-MD", "-MF", "/tmp/evil.d"])),
        ("-Wp,-MD", with(&["-Wp,-MD,/tmp/evil.d"])),
        ("@file", with(&["@/etc/passwd"])),
        ("-save-temps", with(&["-save-temps"])),
        ("-fdump", with(&["-fdump-tree-all"])),
        ("-x assembler", with(&["-x", "assembler"])),
        ("input outside the unit", strings(&["-c", "/etc/passwd"])),
        ("two inputs", strings(&["-c", "plain.c", "plain.c"])),
        ("no -c", strings(&["plain.c"])),
    ];
    let mut problems = Vec::new();
    for (name, args) in &bad_args {
        let response = client.call(&source_request(identity, args, &cwd, &files));
        eprintln!("[e2e] source mode {name}: {}", describe(&response));
        if !matches!(&response, Response::Refused(r) if r.kind == RefusalKind::BadArguments) {
            problems.push(format!(
                "{name}: expected Refused(BadArguments), got {}",
                describe(&response)
            ));
        }
        client.ping(name);
    }
    let escape =
        |path: &str| discomy_protocol::SourceFile { path: path.to_owned(), ..file.clone() };
    let bad_units: Vec<(&str, String, Vec<discomy_protocol::SourceFile>)> = vec![
        ("file path with ..", cwd.clone(), vec![file.clone(), escape("/tmp/../etc/x.h")]),
        ("relative file path", cwd.clone(), vec![file.clone(), escape("etc/x.h")]),
        ("relative cwd", "work".to_owned(), files.clone()),
        ("cwd with ..", format!("{cwd}/.."), files.clone()),
        ("no files", cwd.clone(), Vec::new()),
        ("a file named twice", cwd.clone(), vec![file.clone(), file.clone()]),
    ];
    for (name, unit_cwd, unit_files) in &bad_units {
        let args = strings(&["-O2", "-c", "plain.c"]);
        let response = client.call(&source_request(identity, &args, unit_cwd, unit_files));
        eprintln!("[e2e] source mode {name}: {}", describe(&response));
        if !matches!(&response, Response::Refused(r) if r.kind == RefusalKind::BadRequest) {
            problems
                .push(format!("{name}: expected Refused(BadRequest), got {}", describe(&response)));
        }
        client.ping(name);
    }
    // Dependency-file options other than targets: refused before anything runs.
    for targets in [&["-MF", "/tmp/evil.d"][..], &["-MT"][..], &["-o", "/tmp/x"][..]] {
        let mut request = source_request(identity, &strings(&["-c", "plain.c"]), &cwd, &files);
        if let Request::CompileSources(r) = &mut request {
            r.deps =
                Some(discomy_protocol::DepRequest { user_only: false, targets: strings(targets) });
        }
        let response = client.call(&request);
        eprintln!("[e2e] source mode deps {targets:?}: {}", describe(&response));
        if !matches!(&response, Response::Refused(r) if r.kind == RefusalKind::BadRequest) {
            problems.push(format!(
                "deps {targets:?}: expected Refused(BadRequest), got {}",
                describe(&response)
            ));
        }
        client.ping("dependency options");
    }
    // Reading a host file the unit does not ship: the sandbox has nothing there.
    let args = strings(&["-O2", "-include", "/etc/shadow", "-c", "plain.c"]);
    match client.call(&source_request(identity, &args, &cwd, &files)) {
        Response::Compiled(r) if r.exit_code != 0 => {
            let stderr = String::from_utf8_lossy(&r.stderr);
            if stderr.contains("root:") {
                problems.push(format!("-include /etc/shadow leaked host content: {stderr}"));
            }
        }
        other => problems.push(format!(
            "-include /etc/shadow: expected a failed compile, got {}",
            describe(&other)
        )),
    }
    if marker.exists() {
        problems.push(format!("the worker created {}", marker.display()));
    }
    Client::connect(worker.addr).ping("the hostile source-mode units (new connection)");
    assert!(worker.proc.try_wait().is_none(), "the worker died");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
