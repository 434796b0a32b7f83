//! `discomy-bench cache`: the object cache side by side with ccache on the same real files and
//! flags. Hit latency (one compile call served from a warm cache, output removed before each
//! call) of `discomy-cc` vs ccache direct mode vs ccache preprocessor mode, on small Lua units and
//! on an amalgamation of the whole of Lua (`onelua.c`, as Lua's own `onelua.c` builds it: ~1 MB
//! preprocessed), and a warm whole-project rebuild (`make -C src linux`) through each cache.
//! Every hit's object is compared with a plain gcc compile.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;

use crate::project;
use crate::stats::{median, ratio};

/// Options of `discomy-bench cache`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Directory holding lua5.4_*.orig.tar.gz [default: $DISCOMY_PROJECTS_DIR, else
    /// <workspace>/target/projects].
    #[arg(long)]
    pub project_dir: Option<PathBuf>,
    /// Timed hits per file and tool.
    #[arg(long, default_value_t = 21)]
    pub reps: usize,
    /// Timed warm rebuilds per tool.
    #[arg(long, default_value_t = 3)]
    pub build_reps: usize,
    /// Extra compiler flags for every compile (e.g. `-g`).
    #[arg(long, default_value = "")]
    pub flags: String,
}

const FLAGS: &str = "-std=gnu99 -O2 -Wall -Wextra -DLUA_COMPAT_5_3 -DLUA_USE_LINUX";
const SMALL: [&str; 3] = ["lopcodes.c", "lapi.c", "lvm.c"];

/// Lua's core, libraries and interpreter in one translation unit, like Lua's own onelua.c.
const ONELUA: &str = "#define MAKE_LUA\n#include \"lprefix.h\"\n#include <assert.h>\n\
#include <ctype.h>\n#include <errno.h>\n#include <float.h>\n#include <limits.h>\n\
#include <locale.h>\n#include <math.h>\n#include <setjmp.h>\n#include <signal.h>\n\
#include <stdarg.h>\n#include <stddef.h>\n#include <stdio.h>\n#include <stdlib.h>\n\
#include <string.h>\n#include <time.h>\n#define LUA_CORE\n#define LUA_LIB\n#define ltable_c\n\
#define lvm_c\n#include \"luaconf.h\"\n#undef LUAI_FUNC\n#undef LUAI_DDEC\n#undef LUAI_DDEF\n\
#define LUAI_FUNC static\n#define LUAI_DDEC(def)\n#define LUAI_DDEF static\n#include \"lzio.c\"\n\
#include \"lctype.c\"\n#include \"lopcodes.c\"\n#include \"lmem.c\"\n#include \"lundump.c\"\n\
#include \"ldump.c\"\n#include \"lstate.c\"\n#include \"lgc.c\"\n#include \"llex.c\"\n\
#include \"lcode.c\"\n#include \"lparser.c\"\n#include \"ldebug.c\"\n#include \"lfunc.c\"\n\
#include \"lobject.c\"\n#include \"ltm.c\"\n#include \"lstring.c\"\n#include \"ltable.c\"\n\
#include \"ldo.c\"\n#include \"lvm.c\"\n#include \"lapi.c\"\n#include \"lauxlib.c\"\n\
#include \"lbaselib.c\"\n#include \"lcorolib.c\"\n#include \"ldblib.c\"\n#include \"liolib.c\"\n\
#include \"lmathlib.c\"\n#include \"loadlib.c\"\n#include \"loslib.c\"\n#include \"lstrlib.c\"\n\
#include \"ltablib.c\"\n#include \"lutf8lib.c\"\n#include \"linit.c\"\n#include \"lua.c\"\n";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Discomy,
    DiscomyPreprocessed,
    CcacheDirect,
    CcachePreprocessor,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Discomy => "discomy-cc (direct)",
            Tool::DiscomyPreprocessed => "discomy-cc (preprocessed)",
            Tool::CcacheDirect => "ccache direct mode",
            Tool::CcachePreprocessor => "ccache preprocessor mode",
        }
    }

    /// The command for `gcc ARGS` through this tool, with its cache in `cache`.
    fn command(self, cc: &Path, cache: &Path, cwd: &Path) -> Command {
        let mut cmd = match self {
            Tool::Discomy | Tool::DiscomyPreprocessed => {
                let mut c = Command::new(cc);
                c.arg("gcc")
                    .env("DISCOMY_CACHE", "1")
                    .env("DISCOMY_CACHE_DIR", cache)
                    .env("DISCOMY_SOCKET", cache.join("no-agent.sock"))
                    .env("DISCOMY_CACHE_DIRECT", if self == Tool::Discomy { "1" } else { "0" });
                c
            }
            Tool::CcacheDirect | Tool::CcachePreprocessor => {
                let mut c = Command::new("ccache");
                c.arg("gcc").env("CCACHE_DIR", cache).env("CCACHE_MAXSIZE", "5G");
                if self == Tool::CcachePreprocessor {
                    c.env("CCACHE_NODIRECT", "1");
                }
                c
            }
        };
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if (k.starts_with("DISCOMY_")
                && !k.starts_with("DISCOMY_CACHE")
                && k != "DISCOMY_SOCKET")
                || (k.starts_with("CCACHE_")
                    && !matches!(k.as_str(), "CCACHE_DIR" | "CCACHE_MAXSIZE" | "CCACHE_NODIRECT"))
                || matches!(k.as_str(), "MAKEFLAGS" | "MFLAGS" | "MAKELEVEL")
            {
                cmd.env_remove(&k);
            }
        }
        cmd.current_dir(cwd).stdin(Stdio::null());
        cmd
    }
}

const TOOLS: [Tool; 4] =
    [Tool::Discomy, Tool::DiscomyPreprocessed, Tool::CcacheDirect, Tool::CcachePreprocessor];

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn set_old(path: &Path) -> Result<()> {
    let f = std::fs::File::options().write(true).open(path)?;
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))?;
    Ok(())
}

/// Runs the benchmark; returns 1 when a cached object differs from gcc's.
pub fn run(args: &Args) -> Result<i32> {
    let cc = crate::proc::find_discomy_bin("discomy-cc")?;
    let scratch = crate::proc::temp_dir("discomy-bench-cache")?;
    let tarball = project::find_lua_tarball(&project::projects_dir(args.project_dir.as_deref()))?;
    let tree = project::extract(&tarball, scratch.path(), scratch.path())?;
    let src = tree.join("src");
    std::fs::write(src.join("onelua.c"), ONELUA)?;
    set_old(&src.join("onelua.c"))?;
    // Direct mode (ccache's and ours) refuses files changed within the current second (ctime
    // included, which extraction just set): let the tree settle so every tool sees old files.
    std::thread::sleep(Duration::from_secs(2));
    let flags: Vec<String> =
        FLAGS.split_whitespace().chain(args.flags.split_whitespace()).map(String::from).collect();
    let mut mismatches = 0;

    println!("discomy-bench cache: {} via {}", tarball.display(), cc.display());
    println!("flags: {}   reps: {} hits per file and tool (median)", flags.join(" "), args.reps);
    println!("load: {}", crate::stats::load_average());
    println!();
    println!(
        "hit latency, ms (median)       {:>12} {:>12} {:>12} {:>12}   {:>9} {:>9}",
        "discomy", "discomy-pp", "ccache-dir", "ccache-pp", "vs dir", "vs pp"
    );
    let files: Vec<&str> = SMALL.iter().copied().chain(["onelua.c"]).collect();
    for file in &files {
        let obj = format!("{}.o", file.trim_end_matches(".c"));
        let mut argv: Vec<String> = flags.clone();
        argv.extend(["-c".into(), (*file).into(), "-o".into(), obj.clone()]);
        run_ok(Command::new("gcc").args(&argv).current_dir(&src))?;
        let reference = std::fs::read(src.join(&obj))?;
        let mut medians = Vec::new();
        for tool in TOOLS {
            let cache = scratch.path().join(format!("cache-{tool:?}"));
            std::fs::create_dir_all(&cache)?;
            // Two priming calls: the miss, then one hit that settles direct-mode records.
            for _ in 0..2 {
                let _ = std::fs::remove_file(src.join(&obj));
                run_ok(tool.command(&cc, &cache, &src).args(&argv))?;
            }
            let mut times = Vec::with_capacity(args.reps);
            for _ in 0..args.reps {
                let _ = std::fs::remove_file(src.join(&obj));
                let mut cmd = tool.command(&cc, &cache, &src);
                cmd.args(&argv);
                let t = Instant::now();
                run_ok(&mut cmd)?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            if std::fs::read(src.join(&obj))? != reference {
                println!("  MISMATCH: {} {file}: cached object differs from gcc's", tool.label());
                mismatches += 1;
            }
            medians.push(median(&times));
        }
        println!(
            "  {file:<28} {:>12.2} {:>12.2} {:>12.2} {:>12.2}   {:>8.2}x {:>8.2}x",
            medians[0].unwrap_or(f64::NAN),
            medians[1].unwrap_or(f64::NAN),
            medians[2].unwrap_or(f64::NAN),
            medians[3].unwrap_or(f64::NAN),
            ratio(medians[0], medians[2]).unwrap_or(f64::NAN),
            ratio(medians[0], medians[3]).unwrap_or(f64::NAN),
        );
    }
    std::fs::remove_file(src.join("onelua.c"))?;

    // Warm whole-project rebuilds.
    println!();
    println!("warm rebuild of Lua (make -C src -j2 linux, {} reps, median s):", args.build_reps);
    let mycflags = format!("MYCFLAGS={}", args.flags);
    let make = |cc_var: &str, cache: &Path, tool: Option<Tool>| -> Result<f64> {
        let mut clean = Command::new("make");
        clean.current_dir(&tree).args(["-s", "-C", "src", "clean"]).stdout(Stdio::null());
        run_ok(&mut clean)?;
        let cmd = match tool {
            Some(t) => t.command(&cc, cache, &tree),
            None => {
                let mut c = Command::new("make");
                c.current_dir(&tree);
                c
            }
        };
        // The tool's command is `<tool> gcc`; for make we only want its environment.
        let mut m = Command::new("make");
        m.current_dir(&tree)
            .args(["-s", "-C", "src", "-j2", "linux", &mycflags])
            .arg(format!("CC={cc_var}"));
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => m.env(k, v),
                None => m.env_remove(k),
            };
        }
        m.stdin(Stdio::null()).stdout(Stdio::null());
        let t = Instant::now();
        run_ok(&mut m)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let plain = make("gcc -std=gnu99", scratch.path(), None)?;
    let reference = objects(&src)?;
    println!("  plain gcc (cold, no cache)      {plain:>8.2}");
    let mut results = Vec::new();
    for (label, tool, cc_var) in [
        ("discomy-cc", Tool::Discomy, format!("{} gcc -std=gnu99", cc.display())),
        ("ccache", Tool::CcacheDirect, "ccache gcc -std=gnu99".to_string()),
    ] {
        let cache = scratch.path().join(format!("build-cache-{label}"));
        std::fs::create_dir_all(&cache)?;
        let cold = make(&cc_var, &cache, Some(tool))?;
        let mut warm = Vec::new();
        for _ in 0..args.build_reps {
            warm.push(make(&cc_var, &cache, Some(tool))?);
        }
        if objects(&src)? != reference {
            println!("  MISMATCH: {label} warm build objects differ from plain gcc's");
            mismatches += 1;
        }
        let m = median(&warm);
        println!("  {label:<12} cold {cold:>8.2}   warm {:>8.2}", m.unwrap_or(f64::NAN));
        results.push(m);
    }
    println!(
        "  warm rebuild ratio discomy-cc / ccache: {:.2}x",
        ratio(results[0], results[1]).unwrap_or(f64::NAN)
    );
    Ok(i32::from(mismatches > 0))
}

fn objects(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "o") {
            out.push((
                p.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                std::fs::read(&p)?,
            ));
        }
    }
    out.sort();
    Ok(out)
}
