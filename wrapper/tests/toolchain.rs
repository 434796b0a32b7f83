//! Toolchain collection against real compilers: the system gcc, a private gcc 11 unpacked from
//! Debian packages (`scripts/fetch-gcc11.sh`), a real gcc plugin built here, and a real
//! `icecc-create-env` tarball when icecc is installed (a tarball of the same layout otherwise).
#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "tests: panics are failures; they report sizes and timings"
)]

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use discomy_protocol::{Digest, EntryKind, ToolchainManifest};
use discomy_wrapper::icecream::import_icecc_tarball_into;
use discomy_wrapper::invocation::find_on_path;
use discomy_wrapper::toolchain::{
    Toolchain, ToolchainError, collect, collect_cached_in, extras_for_args,
};

fn path_var() -> OsString {
    std::env::var_os("PATH").unwrap_or_default()
}

fn system_gcc() -> PathBuf {
    find_on_path("gcc", &path_var(), None)
        .expect("gcc on PATH (scripts/setup-debian.sh installs it)")
}

fn entry<'a>(m: &'a ToolchainManifest, path: &str) -> Option<&'a EntryKind> {
    m.entries.iter().find(|e| e.path == path).map(|e| &e.kind)
}

fn canonical(p: &Path) -> String {
    p.canonicalize().unwrap().to_str().unwrap().to_string()
}

fn ask(driver: &Path, flag: &str) -> String {
    let out = Command::new(driver).arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Every symlink met from `path` to its file is a Symlink entry with the link's target.
fn assert_chain(m: &ToolchainManifest, path: &Path) {
    let mut cur = PathBuf::from("/");
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    let mut hops = 0;
    while let Some(p) = pending.pop() {
        for comp in p.components() {
            match comp {
                std::path::Component::RootDir => cur = PathBuf::from("/"),
                std::path::Component::ParentDir => {
                    cur.pop();
                }
                std::path::Component::Normal(n) => {
                    let next = cur.join(n);
                    if next.symlink_metadata().unwrap().file_type().is_symlink() {
                        let target = fs::read_link(&next).unwrap();
                        let recorded = entry(m, next.to_str().unwrap());
                        assert_eq!(
                            recorded,
                            Some(&EntryKind::Symlink { target: target.to_str().unwrap().into() }),
                            "symlink {} on the way to {}",
                            next.display(),
                            path.display()
                        );
                        hops += 1;
                        assert!(hops < 40);
                        // Resolve the rest of `p` after the target: restart with target + rest.
                        let rest: PathBuf =
                            p.components().skip_while(|c| c.as_os_str() != n).skip(1).collect();
                        let mut again = target.clone();
                        if !target.is_absolute() {
                            again = cur.join(target);
                        }
                        pending.push(again.join(rest));
                        break;
                    }
                    cur = next;
                }
                _ => {}
            }
        }
    }
    assert!(m.has_file(&canonical(path)), "{} is not a file entry", path.display());
}

/// Builds the toolchain's tree in a fresh directory and compiles `unit` (preprocessed C) there
/// under `chroot`, with nothing from the host but the tree. `None` when not root.
fn compile_in_chroot(tc: &Toolchain, unit: &[u8]) -> Option<Vec<u8>> {
    if !nix_is_root() {
        eprintln!("not root: chroot check skipped");
        return None;
    }
    let root = tempfile::tempdir().unwrap();
    for e in &tc.manifest.entries {
        let at = root.path().join(e.path.trim_start_matches('/'));
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        match &e.kind {
            EntryKind::File { digest, executable, .. } => {
                fs::copy(&tc.sources[digest], &at).unwrap();
                let mode = if *executable { 0o755 } else { 0o644 };
                fs::set_permissions(&at, fs::Permissions::from_mode(mode)).unwrap();
            }
            EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &at).unwrap(),
            EntryKind::Dir => fs::create_dir_all(&at).unwrap(),
        }
    }
    fs::create_dir_all(root.path().join("work")).unwrap();
    fs::write(root.path().join("work/unit.i"), unit).unwrap();
    let chroot = find_on_path("chroot", &path_var(), None)
        .or_else(|| Some(PathBuf::from("/usr/sbin/chroot")).filter(|p| p.exists()))
        .expect("chroot (coreutils)");
    let out = Command::new(chroot)
        .arg(root.path())
        .arg(&tc.manifest.driver)
        .args(["-O2", "-x", "cpp-output", "-c", "/work/unit.i", "-o", "/work/unit.o"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TMPDIR", "/work")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compile in a chroot holding only the closure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(fs::read(root.path().join("work/unit.o")).unwrap())
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Preprocesses a small C file with `gcc` and compiles it locally: (unit, object).
fn local_unit_and_object(gcc: &Path) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hello.c");
    write_file(&src, "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n");
    let unit = dir.path().join("hello.i");
    let obj = dir.path().join("hello.o");
    let pre = Command::new(gcc).arg("-E").arg(&src).arg("-o").arg(&unit).status().unwrap();
    assert!(pre.success());
    let cc = Command::new(gcc)
        .args(["-O2", "-x", "cpp-output", "-c"])
        .arg(&unit)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap();
    assert!(cc.success());
    (fs::read(&unit).unwrap(), fs::read(&obj).unwrap())
}

fn write_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
}

#[test]
fn system_gcc_closure_is_complete_stable_and_covers_extras() {
    let gcc = system_gcc();
    let pv = path_var();
    let started = Instant::now();
    let tc = collect(&gcc, &[], &pv).unwrap();
    let cold = started.elapsed();
    let m = &tc.manifest;
    m.validate().unwrap();
    assert_eq!(m.driver, canonical(&gcc));
    assert_chain(m, &gcc);
    let cc1 = PathBuf::from(ask(&gcc, "-print-prog-name=cc1"));
    assert_chain(m, &cc1);
    let as_ = find_on_path(&ask(&gcc, "-print-prog-name=as"), &pv, None).unwrap();
    assert_chain(m, &as_);
    let libc = m.entries.iter().find(|e| e.path.ends_with("/libc.so.6")).expect("libc.so.6");
    assert!(matches!(libc.kind, EntryKind::File { .. }));
    let loader = Path::new("/lib64/ld-linux-x86-64.so.2");
    if loader.exists() {
        assert_chain(m, loader);
    }
    assert!(m.entries.iter().any(|e| e.path.contains("/ld-linux") && m.has_file(&e.path)));
    assert!(
        m.name.starts_with("gcc ") && m.name.contains(&ask(&gcc, "-dumpmachine")),
        "{}",
        m.name
    );
    for (digest, source) in &tc.sources {
        assert!(source.is_file(), "{}", source.display());
        assert!(m.blobs().binary_search(digest).is_ok());
    }
    let files = m.entries.iter().filter(|e| matches!(e.kind, EntryKind::File { .. })).count();
    eprintln!(
        "gcc closure: {:?}, {} entries ({} files, {} symlinks), {:.1} MB, cold collect {:?}",
        m.name,
        m.entries.len(),
        files,
        m.entries.len() - files,
        m.content_size() as f64 / 1e6,
        cold
    );
    for e in &m.entries {
        eprintln!("  {} {:?}", e.path, e.kind);
    }

    let again = collect(&gcc, &[], &pv).unwrap();
    assert_eq!(again.manifest.digest(), m.digest(), "stable digest");

    let (unit, local) = local_unit_and_object(&gcc);
    if let Some(object) = compile_in_chroot(&tc, &unit) {
        assert!(object == local, "the chroot's object differs from the local one");
    }

    let dir = tempfile::tempdir().unwrap();
    let specs = dir.path().join("extra.specs");
    write_file(&specs, "*cc1_options:\n+ -fno-common\n");
    let with = collect(&gcc, std::slice::from_ref(&specs), &pv).unwrap();
    assert_ne!(with.manifest.digest(), m.digest());
    assert!(with.manifest.has_file(&canonical(&specs)));
    write_file(&specs, "*cc1_options:\n+ -fcommon\n");
    let changed = collect(&gcc, std::slice::from_ref(&specs), &pv).unwrap();
    assert_ne!(changed.manifest.digest(), with.manifest.digest());

    let missing = dir.path().join("missing.specs");
    assert!(matches!(collect(&gcc, &[missing], &pv), Err(ToolchainError::Io { .. })));
}

#[test]
fn cached_collect_is_fast_and_invalidated_by_a_changed_extra() {
    let gcc = system_gcc();
    let pv = path_var();
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let specs = dir.path().join("cached.specs");
    write_file(&specs, "*cc1_options:\n+ -fno-common\n");
    let extras = [specs.clone()];

    let started = Instant::now();
    let first = collect_cached_in(cache.path(), &gcc, &extras, &pv).unwrap();
    let cold = started.elapsed();
    let started = Instant::now();
    let second = collect_cached_in(cache.path(), &gcc, &extras, &pv).unwrap();
    let hit = started.elapsed();
    assert_eq!(first, second);
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        collect_cached_in(cache.path(), &gcc, &extras, &pv).unwrap();
    }
    let mean = started.elapsed() / rounds;
    eprintln!("collect_cached: cold {cold:?}, first hit {hit:?}, mean hit {mean:?}");
    assert!(hit < Duration::from_millis(50), "cache hit took {hit:?}");

    // Changed content (same size, even): the stamp changes, the manifest follows.
    write_file(&specs, "*cc1_options:\n+ -fno-commoX\n");
    let third = collect_cached_in(cache.path(), &gcc, &extras, &pv).unwrap();
    assert_ne!(third.manifest.digest(), first.manifest.digest());
    assert_eq!(third.manifest, collect(&gcc, &extras, &pv).unwrap().manifest);

    // A corrupt cache file is ignored and rewritten.
    let entries: Vec<PathBuf> =
        fs::read_dir(cache.path().join("toolchains")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "one cache file, no temporaries left: {entries:?}");
    fs::write(&entries[0], b"garbage").unwrap();
    let fourth = collect_cached_in(cache.path(), &gcc, &extras, &pv).unwrap();
    assert_eq!(fourth.manifest, third.manifest);
    assert_ne!(fs::read(&entries[0]).unwrap(), b"garbage");

    // Another driver name for the same compiler is another key (its symlinks differ).
    let gcc_real = gcc.canonicalize().unwrap();
    let other = collect_cached_in(cache.path(), &gcc_real, &extras, &pv).unwrap();
    assert_eq!(other.manifest.driver, third.manifest.driver);
    if gcc_real != gcc {
        assert_ne!(other.manifest.digest(), third.manifest.digest());
    }
}

/// A real gcc plugin that needs no plugin headers: gcc looks up these two symbols.
const PLUGIN_SOURCE: &str = r#"
#include <string>
extern "C" {
int plugin_is_GPL_compatible;
int plugin_init(void *, void *) { std::string name("discomy"); return name.size() == 7 ? 0 : 1; }
}
"#;

#[test]
fn extras_for_args_finds_specs_and_plugins() {
    let gcc = system_gcc();
    let pv = path_var();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let plugin_dir = root.join("plugins");
    fs::create_dir(&plugin_dir).unwrap();
    let src = root.join("plugin.cc");
    write_file(&src, PLUGIN_SOURCE);
    let gxx = find_on_path("g++", &pv, None).expect("g++ on PATH");
    let so = plugin_dir.join("myplugin.so");
    let built = Command::new(&gxx)
        .args(["-shared", "-fPIC", "-fno-rtti", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));

    // Like Red Hat's redhat-annobin-cc1: the plugin comes from inside the specs file.
    let abs_specs = root.join("annobin-like.specs");
    write_file(
        &abs_specs,
        "*cc1_options:\n+ %{!fno-use-myplugin:-fplugin=myplugin} %{fuse-absent:-fplugin=absent}\n",
    );
    let rel_specs = root.join("hardened-like.specs");
    write_file(
        &rel_specs,
        "*cc1_options:\n+ %{!r:%{!fpie:%{!fPIE:%{!fpic:%{!fPIC:%{!fno-pic:-fPIE}}}}}}\n",
    );
    // Relative to the current directory, through `..` up to `/`.
    let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
    let ups = "../".repeat(cwd.components().count() - 1);
    let rel = format!("{ups}{}", rel_specs.to_str().unwrap().trim_start_matches('/'));
    assert!(Path::new(&rel).is_relative() && Path::new(&rel).is_file());

    let args: Vec<String> = [
        "-O2".to_string(),
        format!("-specs={}", abs_specs.display()),
        "-specs".to_string(),
        rel.clone(),
        format!("-iplugindir={}", plugin_dir.display()),
        "-c".to_string(),
    ]
    .into();
    let extras = extras_for_args(&args, &gcc, &pv).unwrap();
    assert_eq!(extras.len(), 3, "{extras:?}");
    assert_eq!(extras[0], abs_specs);
    assert_eq!(extras[1].canonicalize().unwrap(), rel_specs);
    assert_eq!(extras[2], so);

    // gcc itself agrees: the specs file loads the plugin and the compile succeeds.
    let hello = root.join("hello.c");
    write_file(&hello, "int main(void) { return 0; }\n");
    let mut compile = Command::new(&gcc);
    compile.args(&args).arg(&hello).arg("-o").arg(root.join("hello.o"));
    let out = compile.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Explicit -fplugin: a path as is, a bare name in gcc's own plugin directory.
    let args = vec![format!("-fplugin={}", so.display()), "-fplugin-arg-myplugin-x=1".into()];
    assert_eq!(extras_for_args(&args, &gcc, &pv).unwrap(), std::slice::from_ref(&so));
    let system_plugins = PathBuf::from(ask(&gcc, "-print-file-name=plugin"));
    if system_plugins.join("libcc1plugin.so").is_file() {
        let args = vec!["-fplugin=libcc1plugin".to_string()];
        assert_eq!(
            extras_for_args(&args, &gcc, &pv).unwrap(),
            [system_plugins.join("libcc1plugin.so")]
        );
    }
    for bad in ["-fplugin=no-such-plugin", "-specs=/no/such.specs", "-specs=no-such.specs"] {
        let err = extras_for_args(&[bad.to_string()], &gcc, &pv).unwrap_err();
        assert!(matches!(err, ToolchainError::NotFound { .. }), "{bad}: {err}");
    }
    assert!(extras_for_args(&["-O2".into(), "-c".into()], &gcc, &pv).unwrap().is_empty());

    // The closure holds the plugin and every library it loads.
    let tc = collect(&gcc, &extras, &pv).unwrap();
    assert!(tc.manifest.has_file(so.to_str().unwrap()));
    assert!(tc.manifest.has_file(abs_specs.to_str().unwrap()));
    assert!(tc.manifest.has_file(rel_specs.to_str().unwrap()));
    let ldd = Command::new("ldd").arg(&so).output().unwrap();
    let ldd = String::from_utf8(ldd.stdout).unwrap();
    assert!(ldd.contains("libstdc++.so.6"), "{ldd}");
    for line in ldd.lines() {
        let path = line.split("=>").last().unwrap().trim().split(" (").next().unwrap().trim();
        if path.starts_with('/') {
            assert_chain(&tc.manifest, Path::new(path));
        }
    }
}

/// `<target>/tmp/gcc11`, filled by scripts/fetch-gcc11.sh.
fn gcc11_prefix() -> PathBuf {
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gcc11");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-gcc11.sh");
    let out = Command::new("bash").arg(&script).arg(&prefix).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/fetch-gcc11.sh {} failed (it needs Debian's apt and network access to \
         deb.debian.org):\n{}",
        prefix.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    prefix.canonicalize().unwrap()
}

#[test]
fn private_gcc11_prefix_is_its_own_toolchain() {
    let prefix = gcc11_prefix();
    let pv = path_var();
    let gcc11 = prefix.join("usr/bin/gcc-11");
    let tc = collect(&gcc11, &[], &pv).unwrap();
    let m = &tc.manifest;
    let p = prefix.to_str().unwrap();
    assert!(matches!(entry(m, &format!("{p}/usr/bin/gcc-11")), Some(EntryKind::Symlink { .. })));
    assert_eq!(m.driver, format!("{p}/usr/bin/x86_64-linux-gnu-gcc-11"));
    assert!(m.has_file(&m.driver));
    assert!(m.has_file(&format!("{p}/usr/lib/gcc/x86_64-linux-gnu/11/cc1")), "{m:#?}");
    assert!(m.name.starts_with("gcc 11."), "{}", m.name);
    let gcc12 = collect(&system_gcc(), &[], &pv).unwrap();
    assert_ne!(m.digest(), gcc12.manifest.digest());
    let (unit, local) = local_unit_and_object(&gcc11);
    if let Some(object) = compile_in_chroot(&tc, &unit) {
        assert!(object == local, "gcc 11's chroot object differs from its local one");
    }
    eprintln!(
        "gcc 11 closure: {:?}, {} entries, {:.1} MB",
        m.name,
        m.entries.len(),
        m.content_size() as f64 / 1e6
    );
}

fn blob_ok(tc: &discomy_wrapper::toolchain::Toolchain, digest: &Digest) {
    let source = &tc.sources[digest];
    let data = fs::read(source).unwrap();
    assert_eq!(&Digest::of(&data), digest, "{}", source.display());
}

#[test]
fn icecc_create_env_tarball_imports() {
    let gcc = system_gcc();
    let pv = path_var();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    // DISCOMY_TEST_NO_ICECC=1 forces the fallback tarball (what CI without icecc runs).
    let create_env = find_on_path("icecc-create-env", &pv, None)
        .filter(|_| std::env::var_os("DISCOMY_TEST_NO_ICECC").is_none());
    let tarball = match create_env {
        Some(create_env) => {
            let gxx = find_on_path("g++", &pv, None).expect("g++ on PATH");
            let out = Command::new(create_env)
                .arg("--gcc")
                .arg(&gcc)
                .arg(&gxx)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let made = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
                .expect("icecc-create-env made a .tar.gz");
            eprintln!("icecc-create-env made {}", made.display());
            made
        }
        None => {
            eprintln!("icecc-create-env not installed: using a tarball of the same layout");
            let made = dir.path().join("0123456789abcdef0123456789abcdef.tar.gz");
            // What icecc-create-env 1.4 writes: programs as plain files under usr/bin, every
            // library at the path ldd names (symlinks dereferenced), etc/ld.so.conf.
            let cc1 = PathBuf::from(ask(&gcc, "-print-prog-name=cc1"));
            let as_ = find_on_path("as", &pv, None).unwrap();
            let mut members: Vec<(String, PathBuf)> = vec![
                ("usr/bin/gcc".into(), gcc.clone()),
                ("usr/bin/cc1".into(), cc1.clone()),
                ("usr/bin/as".into(), as_.clone()),
            ];
            for program in [&gcc, &cc1, &as_] {
                let ldd = Command::new("ldd").arg(program).output().unwrap();
                for line in String::from_utf8(ldd.stdout).unwrap().lines() {
                    let lib = line.split("=>").last().unwrap().trim();
                    let lib = lib.split(" (").next().unwrap().trim();
                    if lib.starts_with('/') && !members.iter().any(|(n, _)| n == &lib[1..]) {
                        members.push((lib[1..].to_string(), PathBuf::from(lib)));
                    }
                }
            }
            let gz = flate2::write::GzEncoder::new(
                fs::File::create(&made).unwrap(),
                flate2::Compression::fast(),
            );
            let mut b = tar::Builder::new(gz);
            for (name, src) in &members {
                b.append_path_with_name(src.canonicalize().unwrap(), name).unwrap();
            }
            let conf = b"/lib/x86_64-linux-gnu\n";
            let mut h = tar::Header::new_gnu();
            h.set_size(conf.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, "etc/ld.so.conf", &conf[..]).unwrap();
            b.into_inner().unwrap().finish().unwrap();
            made
        }
    };
    let started = Instant::now();
    let tc = import_icecc_tarball_into(&tarball, "gcc", cache.path()).unwrap();
    let took = started.elapsed();
    let m = &tc.manifest;
    m.validate().unwrap();
    assert_eq!(m.driver, "/usr/bin/gcc");
    for file in ["/usr/bin/gcc", "/usr/bin/cc1", "/usr/bin/as", "/lib64/ld-linux-x86-64.so.2"] {
        assert!(m.has_file(file), "{file}: {m:#?}");
    }
    assert!(m.has_file("/lib/x86_64-linux-gnu/libc.so.6"));
    assert!(m.has_file("/etc/ld.so.conf"));
    assert!(matches!(entry(m, "/usr/bin/gcc"), Some(EntryKind::File { executable: true, .. })));
    assert_eq!(tc.sources.len(), m.blobs().len());
    for digest in m.blobs() {
        blob_ok(&tc, &digest);
        assert!(tc.sources[&digest].starts_with(cache.path().join("blobs")));
    }
    eprintln!(
        "icecc import: {} entries, {:.1} MB, {:?}, from {}",
        m.entries.len(),
        m.content_size() as f64 / 1e6,
        took,
        tarball.display()
    );
    let (unit, local) = local_unit_and_object(&gcc);
    if let Some(object) = compile_in_chroot(&tc, &unit) {
        assert!(object == local, "the icecc tree's object differs from the local one");
    }
    let again = import_icecc_tarball_into(&tarball, "gcc", cache.path()).unwrap();
    assert_eq!(again.manifest.digest(), m.digest());
    assert!(import_icecc_tarball_into(&tarball, "clang", cache.path()).is_err());
}

/// A tar header whose name is written raw (the tar crate refuses to write `..` itself).
fn raw_member(name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    if let Some(link) = link {
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tarball(dir: &Path, name: &str, members: &[Vec<u8>]) -> PathBuf {
    let path = dir.join(name);
    let mut gz = flate2::write::GzEncoder::new(
        fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    for m in members {
        gz.write_all(m).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap();
    path
}

#[test]
fn icecc_tarball_symlinks_hardlinks_and_escapes() {
    use tar::EntryType as T;
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let good = tarball(
        dir.path(),
        "good.tar.gz",
        &[
            raw_member("./usr/", T::Directory, None, b""),
            raw_member("./usr/bin/x86_64-linux-gnu-gcc-12", T::Regular, None, b"driver"),
            raw_member("./usr/bin/gcc-12", T::Symlink, Some("x86_64-linux-gnu-gcc-12"), b""),
            raw_member("./usr/bin/gcc", T::Symlink, Some("gcc-12"), b""),
            raw_member("./usr/bin/cc1", T::Link, Some("./usr/bin/x86_64-linux-gnu-gcc-12"), b""),
            raw_member("./tmp/", T::Directory, None, b""),
        ],
    );
    let tc = import_icecc_tarball_into(&good, "gcc", cache.path()).unwrap();
    let m = &tc.manifest;
    assert_eq!(m.driver, "/usr/bin/x86_64-linux-gnu-gcc-12");
    assert_eq!(m.name, "gcc icecc good");
    assert!(m.has_file("/usr/bin/cc1"));
    assert_eq!(entry(m, "/usr/bin/gcc"), Some(&EntryKind::Symlink { target: "gcc-12".into() }));
    assert_eq!(entry(m, "/tmp"), Some(&EntryKind::Dir), "empty directories stay");
    assert_eq!(entry(m, "/usr"), None, "parents are implied");
    assert_eq!(m.blobs().len(), 1);
    blob_ok(&tc, &Digest::of(b"driver"));

    for (name, member) in [
        ("dotdot", raw_member("usr/../../etc/passwd", T::Regular, None, b"x")),
        ("absolute", raw_member("/etc/passwd", T::Regular, None, b"x")),
        ("hardlink-escape", raw_member("usr/bin/gcc", T::Link, Some("../etc/passwd"), b"")),
    ] {
        let bad = tarball(dir.path(), &format!("{name}.tar.gz"), &[member]);
        let err = import_icecc_tarball_into(&bad, "gcc", cache.path()).unwrap_err();
        assert!(matches!(err, ToolchainError::Tarball { .. }), "{name}: {err}");
    }
    let under_link = tarball(
        dir.path(),
        "under-link.tar.gz",
        &[
            raw_member("lib", T::Symlink, Some("/etc"), b""),
            raw_member("lib/passwd", T::Regular, None, b"x"),
            raw_member("usr/bin/gcc", T::Regular, None, b"gcc"),
        ],
    );
    assert!(import_icecc_tarball_into(&under_link, "gcc", cache.path()).is_err());
    let bz = dir.path().join("x.tar.bz2");
    fs::write(&bz, b"BZh91AY&SY").unwrap();
    let err = import_icecc_tarball_into(&bz, "gcc", cache.path()).unwrap_err();
    assert!(err.to_string().contains("bzip2"), "{err}");
}
