//! The worker's allow-list for compile-step arguments.
//!
//! A worker runs a compiler with arguments a client chose, so every argument must have a shape
//! we know to be harmless: no way to run another program (`-wrapper`, `-B`, plugins, specs), read
//! files (`@file`), or write anywhere but the unit's private directory (`-o`, dump and temp
//! options). Input and output are always the worker's own.

use discomy_protocol::ToolchainManifest;
use discomy_protocol::sources::normalise;

/// Why a command line is refused (the text goes back to the client, which compiles locally).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// An argument not on the allow-list.
    #[error("argument `{arg}` refused: {reason}")]
    Argument {
        /// The argument.
        arg: String,
        /// Why it is not allowed.
        reason: &'static str,
    },
    /// An option whose value is missing.
    #[error("argument `{0}` has no value")]
    NoValue(String),
    /// `-x` of a language a worker does not compile.
    #[error("language `-x {0}` refused")]
    Language(String),
    /// An input that climbs above `/`.
    #[error("input `{0}` leaves `/`")]
    OutsideRoot(String),
    /// An input that is not one of the unit's files.
    #[error("input `{0}` is not one of the unit's files")]
    UnknownInput(String),
    /// Not exactly one input and one of `-c`/`-S`.
    #[error("{inputs} inputs and {modes} of -c/-S (one of each expected)")]
    Shape {
        /// Inputs found.
        inputs: usize,
        /// `-c`/`-S` found.
        modes: usize,
    },
}

/// Checks compile-step arguments; `Err` says which argument was refused and why.
///
/// `-specs=FILE` and `-fplugin=FILE` are accepted only when FILE is an absolute path to a file
/// inside the unit's toolchain (the client shipped it; it runs inside the sandbox).
pub fn check_compile_args(args: &[String], toolchain: &ToolchainManifest) -> Result<(), Refused> {
    // The toolchain's plugins by name, listed once for the whole command line (not once per
    // `-fplugin=`), so the work stays linear in the arguments and the manifest.
    let mut plugins: Option<std::collections::HashSet<&str>> = None;
    for arg in args {
        let shipped = ["-specs=", "-fplugin="]
            .iter()
            .find_map(|p| arg.strip_prefix(p))
            .is_some_and(|path| toolchain.has_file(path))
            || arg.strip_prefix("-fplugin=").is_some_and(|name| {
                plugins.get_or_insert_with(|| shipped_plugins(toolchain)).contains(name)
            });
        if shipped {
            continue;
        }
        if let Some(reason) = refusal(arg) {
            return Err(Refused::Argument { arg: arg.clone(), reason });
        }
    }
    Ok(())
}

/// Options of a source-mode command line that take their value as the next argument.
const SOURCE_WITH_VALUE: &[&str] =
    &["-I", "-D", "-U", "-include", "-imacros", "-isystem", "-iquote", "-idirafter", "-x"];

/// Checks a source-mode command line (the build's own arguments, run in `cwd` over `files`).
///
/// Reading is harmless there (the sandbox holds only the unit's files and the toolchain), so
/// preprocessor options that read are accepted; everything that writes, runs programs or reads
/// outside the command line's own files is refused as in [`check_compile_args`]. Exactly one
/// input, which must be one of the unit's files, and exactly one of `-c`/`-S`.
///
/// An LTRANS unit (one partition of an LTO link) is `-x lto` with `-fltrans`: each only with
/// the other, its input a partition object the client shipped like a source.
pub fn check_source_args(
    args: &[String],
    toolchain: &ToolchainManifest,
    files: &[discomy_protocol::SourceFile],
    cwd: &str,
) -> Result<(), Refused> {
    let mut inputs = 0;
    let mut modes = 0;
    let (mut lto_input, mut ltrans) = (false, false);
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if arg == "-c" || arg == "-S" {
            modes += 1;
            continue;
        }
        if arg == "-fltrans" {
            ltrans = true;
            continue;
        }
        if SOURCE_WITH_VALUE.contains(&arg) {
            let Some(value) = args.get(i) else {
                return Err(Refused::NoValue(arg.to_string()));
            };
            i += 1;
            if arg == "-x" && value == "lto" {
                lto_input = true;
            } else if arg == "-x" && !matches!(value.as_str(), "c" | "c++") {
                return Err(Refused::Language(value.to_string()));
            }
            continue;
        }
        if !arg.starts_with('-') || arg == "-" {
            // One input only: a second is refused before the file list is searched again, so
            // the work stays linear in the arguments and the files.
            if inputs == 1 {
                return Err(Refused::Shape { inputs: 2, modes });
            }
            let path = if arg.starts_with('/') { arg.to_string() } else { format!("{cwd}/{arg}") };
            let path = normalise(&path).ok_or_else(|| Refused::OutsideRoot(arg.to_string()))?;
            if !files.iter().any(|f| f.path == path) {
                return Err(Refused::UnknownInput(arg.to_string()));
            }
            inputs += 1;
            continue;
        }
        let joined = ["-I", "-D", "-U", "-isystem", "-iquote", "-idirafter"];
        if joined.iter().any(|p| arg.starts_with(p)) && !arg.starts_with("-include") {
            continue;
        }
        if let Some(list) = arg.strip_prefix("-Wp,") {
            if list.split(',').all(|a| a.starts_with("-D") || a.starts_with("-U")) {
                continue;
            }
            return Err(Refused::Argument {
                arg: arg.to_string(),
                reason: "preprocessor option that writes",
            });
        }
        check_compile_args(std::slice::from_ref(&args[i - 1]), toolchain)?;
    }
    if inputs != 1 || modes != 1 {
        return Err(Refused::Shape { inputs, modes });
    }
    if lto_input && !ltrans {
        return Err(Refused::Language("lto".into()));
    }
    if ltrans && !lto_input {
        return Err(Refused::Argument {
            arg: "-fltrans".into(),
            reason: "an LTO partition only, with -x lto",
        });
    }
    Ok(())
}

/// The names `-fplugin=NAME` may use: gcc loads `<its plugin dir>/NAME.so`, accepted when the
/// toolchain ships that file.
fn shipped_plugins(toolchain: &ToolchainManifest) -> std::collections::HashSet<&str> {
    toolchain
        .entries
        .iter()
        .filter(|e| matches!(e.kind, discomy_protocol::EntryKind::File { .. }))
        .filter_map(|e| {
            let (_, file) = e.path.rsplit_once("/plugin/")?;
            let name = file.strip_suffix(".so")?;
            (!name.is_empty() && !name.contains('/') && !name.contains("..")).then_some(name)
        })
        .collect()
}

fn refusal(arg: &str) -> Option<&'static str> {
    if !arg.starts_with('-') {
        return Some("inputs and free-standing values are not accepted");
    }
    let refused: &[(&str, &str)] = &[
        ("-wrapper", "runs another program"),
        ("-B", "changes where the compiler finds its programs"),
        ("-specs", "specs files can run programs"),
        ("-fplugin", "plugins are code"),
        ("-iplugindir", "plugins are code"),
        ("-save-temps", "writes files outside the unit directory"),
        ("-fdump", "writes dump files"),
        ("-dump", "writes dump files"),
        ("-d", "dump options"),
        ("-o", "the worker chooses the output"),
        ("-x", "the worker chooses the language"),
        ("--sysroot", "paths outside the unit"),
        ("-isysroot", "paths outside the unit"),
        ("-aux-info", "writes a file"),
        ("-fprofile", "reads or writes profile files"),
        ("-fauto-profile", "reads profile files"),
        ("-fstack-usage", "writes a file"),
        ("-fcallgraph-info", "writes a file"),
        ("-frecord-gcc-switches", "not reproducible remotely"),
        ("-fltrans", "an LTO partition only, in source mode with -x lto"),
        ("-fwpa", "writes the partitions of an LTO link"),
        ("-fresolution", "reads a linker resolution file"),
        ("-I", "preprocessor option on a preprocessed unit"),
        ("-include", "preprocessor option on a preprocessed unit"),
        ("-imacros", "preprocessor option on a preprocessed unit"),
        ("-M", "preprocessor option on a preprocessed unit"),
        ("-Wp,", "preprocessor option on a preprocessed unit"),
        ("-Xpreprocessor", "preprocessor option on a preprocessed unit"),
        ("-E", "the worker compiles"),
        ("-v", "verbose output"),
        ("-###", "prints commands"),
        ("--help", "not a compile"),
        ("--version", "not a compile"),
        ("-print", "not a compile"),
    ];
    if arg.starts_with('@') {
        return Some("response files read local files");
    }
    if let Some(list) = arg.strip_prefix("-Wa,") {
        if list.split(',').any(|a| {
            a.starts_with("-a")
                || a.starts_with("--MD")
                || a.starts_with('@')
                || a.starts_with("-o")
        }) {
            return Some("assembler option writes or reads files");
        }
    }
    refused.iter().find(|(prefix, _)| arg.starts_with(prefix)).map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> ToolchainManifest {
        let file = |p: &str| discomy_protocol::TreeEntry {
            path: p.into(),
            kind: discomy_protocol::EntryKind::File {
                digest: discomy_protocol::Digest::of(p.as_bytes()),
                size: 1,
                executable: false,
            },
        };
        ToolchainManifest {
            name: "t".into(),
            driver: "/usr/bin/gcc".into(),
            entries: vec![
                file("/usr/bin/gcc"),
                file("/usr/lib/gcc/p/annobin.so"),
                file("/usr/lib/gcc/x/plugin/good.so"),
                file("/usr/lib/rpm/hardened"),
            ],
        }
    }

    fn check(args: &[String]) -> Result<(), Refused> {
        check_compile_args(args, &tree())
    }

    #[test]
    fn shipped_specs_and_plugins_pass_others_do_not() {
        assert!(
            check(&v("-specs=/usr/lib/rpm/hardened -fplugin=/usr/lib/gcc/p/annobin.so")).is_ok()
        );
        assert!(check(&v("-fplugin=good")).is_ok());
        for bad in [
            "-specs=/etc/passwd",
            "-fplugin=/tmp/evil.so",
            "-fplugin=annobin",
            "-specs=/usr/lib/rpm",
            "-fplugin=../x",
        ] {
            assert!(check(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn ordinary_flags_pass() {
        assert!(check(&v("-O2 -Wall -Wextra -std=gnu99 -fPIC -m64 -g -gno-record-gcc-switches -pipe -Wa,--noexecstack")).is_ok());
        // Rocky 9's LTO flags: at -c gcc writes one object, nothing else.
        assert!(check(&v("-flto=auto -ffat-lto-objects -flto=jobserver -flto=4 -flto -fno-fat-lto-objects -frandom-seed=x.o")).is_ok());
    }

    #[test]
    fn hostile_flags_are_refused() {
        for bad in [
            "-wrapper",
            "/bin/sh,-c,touch",
            "@/etc/passwd",
            "-B/tmp",
            "-specs=/tmp/x",
            "-fplugin=/x.so",
            "-save-temps",
            "-fdump-tree-all",
            "-o",
            "-dumpdir",
            "-Wa,-adhln=/etc/x",
            "-Wa,@/etc/passwd",
            "-I/etc",
            "-Wp,-MD,/tmp/x",
            "--sysroot=/",
            "-fprofile-generate",
            "-x",
        ] {
            assert!(check(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    fn lto_files() -> Vec<discomy_protocol::SourceFile> {
        vec![discomy_protocol::SourceFile {
            path: "/tmp/ccA.ltrans0.o".into(),
            digest: discomy_protocol::Digest::of(b"x"),
            size: 1,
        }]
    }

    /// An LTRANS unit as the wrapper sends it passes; `-x lto` and `-fltrans` are refused
    /// without each other, and the other LTO steps (WPA, its outputs) are refused.
    #[test]
    fn ltrans_units_pass_only_as_ltrans_units() {
        let src = |a: &str| check_source_args(&v(a), &tree(), &lto_files(), "/src");
        let ltrans = "-x lto -c -fno-openmp -fPIC -g -m64 -march=x86-64-v2 -O2 \
                      -fcf-protection=full -fltrans /tmp/ccA.ltrans0.o";
        assert_eq!(src(ltrans), Ok(()));
        assert_eq!(src("-x lto -c -O2 /tmp/ccA.ltrans0.o"), Err(Refused::Language("lto".into())));
        assert!(matches!(
            src("-x c -c -O2 -fltrans /tmp/ccA.ltrans0.o"),
            Err(Refused::Argument { .. })
        ));
        assert!(matches!(src("-c -O2 -fltrans /tmp/ccA.ltrans0.o"), Err(Refused::Argument { .. })));
        for bad in [
            "-x lto -c -fltrans -fltrans-output-list=/tmp/l /tmp/ccA.ltrans0.o",
            "-x lto -c -fltrans -fwpa /tmp/ccA.ltrans0.o",
            "-x lto -c -fltrans -fresolution=/etc/passwd /tmp/ccA.ltrans0.o",
            "-x lto -c -fltrans -dumpdir /tmp/ /tmp/ccA.ltrans0.o",
            "-x lto -c -fltrans -o /tmp/x /tmp/ccA.ltrans0.o",
            "-xlto -c -fltrans /tmp/ccA.ltrans0.o",
            "-x lto -c -fltrans /tmp/other.o",
            "-x lto -c -fltrans /tmp/ccA.ltrans0.o /tmp/ccA.ltrans0.o",
        ] {
            assert!(src(bad).is_err(), "{bad}");
        }
        // Not in a preprocessed unit's command line at all.
        assert!(check(&v("-fltrans")).is_err());
    }

    /// A second input is refused at once: thousands of inputs over thousands of files are not
    /// each searched for (arguments × files).
    #[test]
    fn a_second_input_stops_the_check() {
        let files: Vec<discomy_protocol::SourceFile> = (0..5000)
            .map(|i| discomy_protocol::SourceFile {
                path: format!("/src/f{i}.c"),
                digest: discomy_protocol::Digest::of(b"x"),
                size: 1,
            })
            .collect();
        let mut args = v("-O2 -c");
        args.extend((0..5000).map(|i| format!("f{i}.c")));
        assert_eq!(
            check_source_args(&args, &tree(), &files, "/src"),
            Err(Refused::Shape { inputs: 2, modes: 1 })
        );
    }
}
