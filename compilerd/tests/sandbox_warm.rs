//! Process-level tests of warm sandbox helpers (`discomy-sandbox --warm`, `WarmPool`) and of
//! unit trees the helper builds from a list (`--overlay-files`): real namespaces, real gcc.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discomy_compilerd::sandbox::{self, LimitHit, Limits, SandboxError, SandboxSpec, WarmPool};

const HELPER: &str = env!("CARGO_BIN_EXE_discomy-sandbox");
const UNIT: &str = "int cube(int x) { return x * x * x; }\n";

fn env() -> Vec<(String, String)> {
    vec![("PATH".into(), "/usr/bin:/bin".into()), ("LC_ALL".into(), "C".into())]
}

fn spec<'a>(
    work: &'a Path,
    program: &'a str,
    args: &'a [String],
    env: &'a [(String, String)],
    limits: &'a Limits,
    uid: u32,
) -> SandboxSpec<'a> {
    SandboxSpec {
        helper: Path::new(HELPER),
        root: Path::new("/"),
        work,
        program,
        args,
        env,
        limits,
        run_as: Some((uid, uid)),
        cgroup_parents: &[],
        overlay: None,
        overlay_files: None,
        cwd: None,
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

async fn wait_ready(pool: &WarmPool, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.ready() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.ready(), n, "the pool did not refill");
}

#[tokio::test]
async fn warm_helpers_compile_identically_keep_their_limits_and_refill() {
    let limits =
        Limits { nproc: 32, wall: Duration::from_secs(5), cgroups: true, ..Limits::default() };
    let pool = Arc::new(WarmPool::new(HELPER.into(), limits.clone(), 1));
    pool.fill();
    assert_eq!(pool.ready(), 1);
    let env = env();
    let args = strings(&["-O2", "-c", "unit.c", "-o", "unit.o"]);

    let (warm_dir, fresh_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&warm_dir, &fresh_dir] {
        std::fs::write(dir.path().join("unit.c"), UNIT).unwrap();
    }
    // The same run through a warm helper (then waiting for its replacement) and a fresh one.
    let both = async |program: &str, args: &[String]| {
        let warm_spec = spec(warm_dir.path(), program, args, &env, &limits, 61101);
        let warm = sandbox::run_with(&warm_spec, Some(&pool)).await.unwrap();
        let fresh_spec = spec(fresh_dir.path(), program, args, &env, &limits, 61102);
        let fresh = sandbox::run(&fresh_spec).await.unwrap();
        wait_ready(&pool, 1).await;
        (warm, fresh)
    };
    let (warm, fresh) = both("/usr/bin/gcc", &args).await;
    assert_eq!((warm.exit_code, fresh.exit_code), (0, 0), "{warm:?} {fresh:?}");
    let object = std::fs::read(warm_dir.path().join("unit.o")).unwrap();
    assert!(object.starts_with(b"\x7fELF"));
    assert_eq!(object, std::fs::read(fresh_dir.path().join("unit.o")).unwrap());

    // The run's cgroups, when this host gives them, hold a warm run as they hold a fresh one.
    let (warm, fresh) = both("/bin/cat", &strings(&["/proc/self/cgroup"])).await;
    let in_run_cgroup = |out: &sandbox::SandboxOutput| {
        String::from_utf8_lossy(&out.stdout).contains("discomy-sandbox-")
    };
    assert_eq!(in_run_cgroup(&warm), in_run_cgroup(&fresh), "{warm:?} {fresh:?}");

    // A fork bomb from a warm helper is contained like any other.
    let bomb = strings(&[
        "-c",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    ]);
    let out = sandbox::run_with(
        &spec(warm_dir.path(), "/usr/bin/python3", &bomb, &env, &limits, 61101),
        Some(&pool),
    )
    .await
    .unwrap();
    assert!(out.hit(LimitHit::WallTime) || out.hit(LimitHit::Processes), "{out:?}");

    // Other limits than the pool's: a fresh helper, same answer.
    let other = Limits { nproc: 16, ..limits.clone() };
    let echo = strings(&["fine"]);
    wait_ready(&pool, 1).await;
    let out = sandbox::run_with(
        &spec(warm_dir.path(), "/bin/echo", &echo, &env, &other, 61101),
        Some(&pool),
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n");
    assert_eq!(pool.ready(), 1, "a run with other limits took a warm helper");

    // A set-up failure in a warm helper's stage 2 is a set-up failure, not an exit status.
    let missing = sandbox::run_with(
        &spec(warm_dir.path(), "/nonexistent/cc", &echo, &env, &limits, 61101),
        Some(&pool),
    )
    .await;
    match missing {
        Err(SandboxError::Setup(msg)) => assert!(msg.contains("/nonexistent/cc"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_unit_tree_is_built_from_its_list_and_hostile_lists_are_refused() {
    let store = tempfile::tempdir().unwrap();
    let (blob_c, blob_h) = (store.path().join("c"), store.path().join("h"));
    std::fs::write(&blob_c, "#include \"cube.h\"\nint cube(int x) { return CUBE(x); }\n").unwrap();
    std::fs::write(&blob_h, "#define CUBE(x) ((x) * (x) * (x))\n").unwrap();
    // A store readable by the worker alone: the unit tree is still readable by the slot uid.
    for blob in [&blob_c, &blob_h] {
        std::fs::set_permissions(blob, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    let list = |entries: &[(&str, &Path)]| {
        let mut bytes = Vec::new();
        for (path, src) in entries {
            bytes.extend_from_slice(path.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(src.as_os_str().as_encoded_bytes());
            bytes.push(0);
        }
        bytes
    };
    let work = tempfile::tempdir().unwrap();
    let list_file = store.path().join("tree.list");
    let mut good = list(&[("/src/lib/cube.c", &blob_c), ("/src/lib/cube.h", &blob_h)]);
    good.extend_from_slice(b"/src/build\0\0");
    std::fs::write(&list_file, good).unwrap();
    // The toolchain: /bin/dash and its libraries (`/` itself cannot be an overlay layer).
    let tree = tempfile::tempdir().unwrap();
    let dash = std::fs::canonicalize("/bin/dash").unwrap();
    let ldd = std::process::Command::new("ldd").arg(&dash).output().unwrap();
    let copy = |path: &Path| {
        let dst = tree.path().join(path.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(path, &dst).unwrap();
    };
    copy(&dash);
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
    {
        copy(Path::new(lib));
    }
    let env = env();
    let limits = Limits::default();
    let dash = dash.to_string_lossy().into_owned();
    let script = strings(&["-c", "pwd; read a < ../lib/cube.h; echo \"$a\"; echo ok > /tmp/done"]);
    let cwd = Path::new("/src/build");
    let run = SandboxSpec {
        root: tree.path(),
        overlay_files: Some(&list_file),
        cwd: Some(cwd),
        ..spec(work.path(), &dash, &script, &env, &limits, 61103)
    };
    let out = sandbox::run(&run).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/src/build\n#define CUBE(x) ((x) * (x) * (x))\n"
    );
    assert_eq!(std::fs::read_to_string(work.path().join("done")).unwrap(), "ok\n");

    for hostile in ["/src/../etc/x.h", "relative/x.h", "/src//x.h", "/"] {
        std::fs::write(&list_file, list(&[(hostile, &blob_h)])).unwrap();
        let bad = SandboxSpec { cwd: None, ..run };
        match sandbox::run(&bad).await {
            Err(SandboxError::Setup(msg)) => {
                assert!(msg.contains("normalised"), "{hostile}: {msg}")
            }
            other => panic!("{hostile}: {other:?}"),
        }
    }
    std::fs::write(&list_file, b"/src/a.c\0").unwrap();
    let bad = SandboxSpec { cwd: None, ..run };
    assert!(matches!(sandbox::run(&bad).await, Err(SandboxError::Setup(_))));
}
