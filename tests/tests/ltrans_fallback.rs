//! An LTO link through discomy-cc without an agent: its LTRANS units (the link's partitions)
//! reach discomy-cc through gcc's `MAKE`, find no farm and compile locally exactly as asked. The
//! link succeeds and prints nothing, its program is byte-identical to a plain gcc link's, the
//! stats file counts each partition as an LTRANS fallback (`no_agent`) apart from compile units,
//! and no makefile copy is left behind.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::Path;
use std::process::Command;

use discomy_tests::lto::run_quietly;
use discomy_tests::{assert_no_temp_leftovers, bin, clean_command, private_tmp, read_stats};

const A: &str = "__attribute__((noinline)) int helper(int x);
__attribute__((noinline)) int twice(int x) { return helper(x) * 2; }
int main(int argc, char **argv) { (void)argv; return twice(argc) - 4; }
";
const B: &str = "__attribute__((noinline)) int helper(int x) { return x + 1; }\n";

/// `-flto-partition=max`: one partition per function that is not inlined, three here.
const LINK: [&str; 5] = ["-O2", "-g", "-flto=2", "-flto-partition=max", "a.o"];

fn gcc(dir: &Path) -> Command {
    let mut cmd = clean_command("gcc");
    cmd.current_dir(dir);
    cmd
}

#[test]
fn ltrans_units_without_a_farm_compile_locally_and_link_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("a.c"), A).unwrap();
    std::fs::write(dir.join("b.c"), B).unwrap();
    for src in ["a", "b"] {
        let (c, o) = (format!("{src}.c"), format!("{src}.o"));
        run_quietly(gcc(dir).args(["-O2", "-g", "-flto", "-c", &c, "-o", &o]), "LTO compile");
    }
    run_quietly(gcc(dir).args(LINK).args(["b.o", "-o", "plain"]), "plain LTO link");

    let stats = dir.join("stats.tsv");
    let wrapper_tmp = private_tmp(dir, "wrapper");
    let mut link = clean_command(bin("discomy-cc"));
    link.current_dir(dir)
        .arg("gcc")
        .args(LINK)
        .args(["b.o", "-o", "wrapped"])
        .env("DISCOMY_SOCKET", dir.join("no-such-agent.sock"))
        .env("DISCOMY_STATS_FILE", &stats)
        .env("TMPDIR", &wrapper_tmp);
    run_quietly(&mut link, "LTO link through discomy-cc without an agent");
    assert_no_temp_leftovers(&wrapper_tmp, "an LTO link through discomy-cc");
    assert_eq!(
        std::fs::read(dir.join("plain")).unwrap(),
        std::fs::read(dir.join("wrapped")).unwrap(),
        "the LTO link through discomy-cc differs from gcc's"
    );

    let text = std::fs::read_to_string(&stats).unwrap();
    eprintln!("[e2e] stats file:\n{text}");
    let ltrans: Vec<&str> = text.lines().filter(|l| l.starts_with("ltrans\t")).collect();
    assert_eq!(ltrans.len(), 3, "expected one LTRANS line per partition: {text}");
    for line in &ltrans {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!((fields[1], fields[2], fields[4]), ("fallback", "0", "no_agent"), "{line}");
        assert!(fields[3].starts_with("./wrapped.ltrans"), "{line}");
    }
    // Parsed as LTRANS units, never as compile units.
    assert!(read_stats(&stats).iter().all(|l| !l.is_compile()));
    let parsed: Vec<_> =
        text.lines().filter_map(discomy_protocol::stats::StatsLine::parse).collect();
    assert!(parsed.iter().filter(|l| l.ltrans).count() == 3, "{text}");
}
