//! The object cache misses when it must and serves byte-identical results when it hits:
//! header, define (`-D`, `-Wp,-D`), compiler and `-specs` file changes miss and compile
//! correctly; dependency files are regenerated on hits exactly as gcc writes them; units using
//! `__DATE__` are never cached; `-g` objects hit from build directories whose paths are the same
//! length, 1 and 7 bytes longer and 3 bytes shorter, byte-identical to a local compile there.
//! Every result is compared with the real compiler's, run in the same directory.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use discomy_tests::{bin, clean_command, extract_lua, read_stats};

struct Cache {
    dir: PathBuf,
    stats: PathBuf,
}

impl Cache {
    fn new(root: &Path) -> Cache {
        Cache { dir: root.join("cache"), stats: root.join("stats.tsv") }
    }

    /// Runs the real compiler, then discomy-cc, with the same arguments in `dir`; asserts equal
    /// exit codes, output and `outputs`, and whether discomy-cc served it from the cache.
    fn check(&self, dir: &Path, compiler: &str, args: &[&str], outputs: &[&str], hit: bool) {
        let what = format!("{compiler} {}", args.join(" "));
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.current_dir(dir).args(args).output().unwrap();
            let files: Vec<Vec<u8>> = outputs
                .iter()
                .map(|o| {
                    let bytes =
                        fs::read(dir.join(o)).unwrap_or_else(|e| panic!("{what}: {o}: {e}"));
                    fs::remove_file(dir.join(o)).unwrap();
                    bytes
                })
                .collect();
            (out.status.code(), out.stdout, out.stderr, files)
        };
        let want = run(&mut clean_command(compiler));
        let mut ours = clean_command(bin("discomy-cc"));
        ours.arg(compiler)
            .env("DISCOMY_CACHE", "1")
            .env("DISCOMY_CACHE_DIR", &self.dir)
            .env("DISCOMY_SOCKET", dir.join("no-agent.sock"))
            .env("DISCOMY_STATS_FILE", &self.stats);
        let got = run(&mut ours);
        assert_eq!(want.0, got.0, "{what}: exit code");
        assert_eq!(want.1, got.1, "{what}: stdout");
        assert_eq!(
            String::from_utf8_lossy(&want.2),
            String::from_utf8_lossy(&got.2),
            "{what}: stderr"
        );
        for (i, o) in outputs.iter().enumerate() {
            assert!(want.3[i] == got.3[i], "{what}: {o} differs from the real compiler's");
        }
        let last = read_stats(&self.stats).pop().unwrap();
        assert_eq!(last.outcome == "cache", hit, "{what}: outcome {}", last.outcome);
    }
}

/// Sets a file's modification time an hour back, as a file that has not just been edited.
fn age(path: &Path) {
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
}

fn write_old(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    age(path);
}

#[test]
fn changes_miss_and_hits_are_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path());
    let d = tmp.path().join("proj");
    fs::create_dir_all(&d).unwrap();
    write_old(&d.join("t.h"), "#define V 1\n");
    write_old(&d.join("t.c"), "#include \"t.h\"\nint g;\nint f(void) { return V + X; }\n");
    let base = ["-O2", "-DX=1", "-MD", "-c", "t.c", "-o", "t.o"];
    let outs = ["t.o", "t.d"];
    cache.check(&d, "gcc", &base, &outs, false);
    cache.check(&d, "gcc", &base, &outs, true);

    // Header changed, same size: the content digest catches it.
    write_old(&d.join("t.h"), "#define V 2\n");
    cache.check(&d, "gcc", &base, &outs, false);
    cache.check(&d, "gcc", &base, &outs, true);
    // A header edited just now: no direct-mode record, the preprocessed key still serves it.
    fs::write(d.join("t.h"), "#define V 3\n").unwrap();
    cache.check(&d, "gcc", &base, &outs, false);
    cache.check(&d, "gcc", &base, &outs, true);
    age(&d.join("t.h"));

    // Defines changed, on the command line and through -Wp.
    let d2 = ["-O2", "-DX=2", "-MD", "-c", "t.c", "-o", "t.o"];
    cache.check(&d, "gcc", &d2, &outs, false);
    let wp = ["-O2", "-Wp,-DX=3", "-MD", "-c", "t.c", "-o", "t.o"];
    cache.check(&d, "gcc", &wp, &outs, false);
    cache.check(&d, "gcc", &wp, &outs, true);

    // Dependency files regenerated on hits, as gcc writes them. The name of the file is not
    // part of the key (its content is the same): this hits the `-MD` result above.
    let mf = ["-O2", "-DX=1", "-MD", "-MF", "x.d", "-c", "t.c", "-o", "t.o"];
    cache.check(&d, "gcc", &mf, &["t.o", "x.d"], true);
    cache.check(&d, "gcc", &mf, &["t.o", "x.d"], true);
    let mmd = ["-O2", "-DX=1", "-MMD", "-MP", "-MT", "custom", "-c", "t.c", "-o", "t.o"];
    cache.check(&d, "gcc", &mmd, &outs, false);
    cache.check(&d, "gcc", &mmd, &outs, true);

    // A -specs file changed: the compiler identity covers it by content.
    write_old(&d.join("my.specs"), "*cc1_options:\n+ -fcommon\n\n");
    let sp = ["-specs=my.specs", "-O2", "-DX=1", "-c", "t.c", "-o", "t.o"];
    cache.check(&d, "gcc", &sp, &["t.o"], false);
    cache.check(&d, "gcc", &sp, &["t.o"], true);
    write_old(&d.join("my.specs"), "*cc1_options:\n+ -fno-common\n\n");
    cache.check(&d, "gcc", &sp, &["t.o"], false);
    cache.check(&d, "gcc", &sp, &["t.o"], true);

    // Another compiler (gcc 11 from Debian's packages, fetched by scripts/fetch-gcc11.sh).
    let gcc11 = gcc11();
    let gcc11 = gcc11.to_str().unwrap();
    cache.check(&d, gcc11, &base, &outs, false);
    cache.check(&d, gcc11, &base, &outs, true);

    // __DATE__ is never cached.
    write_old(&d.join("u.c"), "const char *d = __DATE__;\n");
    let u = ["-O2", "-c", "u.c", "-o", "u.o"];
    cache.check(&d, "gcc", &u, &["u.o"], false);
    cache.check(&d, "gcc", &u, &["u.o"], false);
}

fn gcc11() -> PathBuf {
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gcc11");
    let script = discomy_tests::workspace_root().join("scripts").join("fetch-gcc11.sh");
    let out = clean_command("bash").arg(&script).arg(&prefix).output().unwrap();
    assert!(out.status.success(), "fetch-gcc11.sh: {}", String::from_utf8_lossy(&out.stderr));
    prefix.join("usr").join("bin").join("gcc-11")
}

#[test]
fn debug_objects_move_between_directories_of_any_length() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path());
    let files = ["lapi", "lopcodes", "lua", "lstring"];
    let args = |f: &str| -> Vec<String> {
        format!(
            "-std=gnu99 -O2 -Wall -Wextra -DLUA_COMPAT_5_3 -DLUA_USE_LINUX -g -MD -c {f}.c -o {f}.o"
        )
        .split(' ')
        .map(String::from)
        .collect()
    };
    // The base directory fills the cache; the others (same length, +1, +7, -3 bytes) must hit.
    for (i, name) in
        ["p-aaaaaaa", "p-bbbbbbb", "p-bbbbbbbb", "p-bbbbbbbbbbbbbb", "p-bbbb"].iter().enumerate()
    {
        let root = tmp.path().join(name);
        fs::create_dir_all(&root).unwrap();
        let src = extract_lua(&root).join("src");
        for f in files {
            let a = args(f);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let (o, dep) = (format!("{f}.o"), format!("{f}.d"));
            cache.check(&src, "gcc", &a, &[&o, &dep], i > 0);
        }
    }
}
