//! Parsing and classifying compiler arguments.
//!
//! A call is distributable when it compiles exactly one C or C++ source with `-c` or `-S` and
//! every argument is one we understand and know to be safe to split into a local preprocessing
//! step (`-E -fdirectives-only`) and a remote compile step (`-fpreprocessed -fdirectives-only`).
//! Anything else runs the real compiler directly, exactly as if discomy were absent.

use std::path::{Path, PathBuf};

use discomy_protocol::stats::Reason;
use discomy_protocol::{Language, OutputKind};

/// How a call is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Not a compile of one source (linking, `--version`, `-E`, …): run the compiler, counted
    /// apart from units.
    Passthrough(Reason),
    /// A compile that must run locally, with the reason.
    Local(LocalReason),
    /// A compile that can go to the farm.
    Distribute(Unit),
}

/// Why a compile stays local: the stable key counted in `discomy stats`, and the detail logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReason {
    /// The counted reason.
    pub kind: Reason,
    /// What exactly (the option, the file).
    pub detail: String,
}

impl LocalReason {
    /// A reason with its detail.
    pub fn new(kind: Reason, detail: impl Into<String>) -> LocalReason {
        LocalReason { kind, detail: detail.into() }
    }
}

impl std::fmt::Display for LocalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail, self.kind.key())
    }
}

/// A distributable compile, split into its two steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The source file as given.
    pub source: String,
    /// Source language.
    pub language: Language,
    /// `-c` or `-S`.
    pub output_kind: OutputKind,
    /// Where the object (or assembly) goes.
    pub output: PathBuf,
    /// Arguments for the local preprocessing run, without `-E`, `-o` and our own additions.
    pub cpp_args: Vec<String>,
    /// Arguments for the remote compile: no input, output, `-c`/`-S`, `-x` or preprocessor options.
    pub compile_args: Vec<String>,
    /// Extra dependency-file arguments that make `-E` write what `-c` would have written.
    pub dep_args: Vec<String>,
    /// The build's arguments without the output and dependency-file options, for source mode.
    pub source_args: Vec<String>,
    /// Only source mode gives an identical object (debug info that records the command line).
    pub needs_sources: bool,
    /// The dependency file the call writes, for a compile that writes it itself.
    pub deps: Deps,
}

/// The dependency file of a call, as a compile (not a preprocessing run) would write it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Deps {
    /// None asked for.
    #[default]
    None,
    /// `-MD`/`-MMD` into `file`, with these target options.
    File {
        /// `-MMD`.
        user_only: bool,
        /// Where it goes (relative to the working directory, as given).
        file: String,
        /// `-MT x`, `-MQ x`, `-MP` as given, or `-MQ <output>`.
        targets: Vec<String>,
    },
    /// Options only a local preprocessing run reproduces (`-Wp,-M…`, `-MG`).
    Unsupported(String),
}

/// Source language from a file name's suffix, as gcc decides it (before `-x`).
pub fn source_language(name: &str) -> Option<Language> {
    let ext = Path::new(name).extension()?.to_str()?;
    match ext {
        "c" => Some(Language::C),
        "cc" | "cp" | "cxx" | "cpp" | "CPP" | "c++" | "C" => Some(Language::Cxx),
        _ => None,
    }
}

/// Preprocessor-only options that take a value (joined or separate).
const CPP_WITH_VALUE: &[&str] = &[
    "-I",
    "-D",
    "-U",
    "-include",
    "-imacros",
    "-isystem",
    "-iquote",
    "-idirafter",
    "-iprefix",
    "-iwithprefix",
    "-iwithprefixbefore",
    "-isysroot",
    "-MF",
    "-MT",
    "-MQ",
    "-Xpreprocessor",
    "-A",
];

/// Other options whose value is the next argument.
const OTHER_WITH_VALUE: &[&str] = &[
    "-o",
    "-x",
    "-Xassembler",
    "-Xlinker",
    "-L",
    "-l",
    "-u",
    "-T",
    "-z",
    "-e",
    "--param",
    "-aux-info",
    "-wrapper",
    "-B",
    "-specs",
    "-dumpbase",
    "-dumpdir",
    "-dumpbase-ext",
    "--sysroot",
    "-target",
    "-arch",
    "-Xclang",
];

/// Whether `arg` takes the next argument as its value.
fn takes_value(arg: &str) -> bool {
    CPP_WITH_VALUE.contains(&arg) || OTHER_WITH_VALUE.contains(&arg)
}

/// A compile the object cache may serve: a distributable unit (units whose debug info records
/// the compiler switches are distributable too, in source mode).
pub fn cacheable(compiler_name: &str, args: &[String]) -> Option<Unit> {
    match classify(compiler_name, args) {
        Class::Distribute(unit) => Some(unit),
        _ => None,
    }
}

/// Classifies a call to the compiler named `compiler_name` with `args`.
pub fn classify(compiler_name: &str, args: &[String]) -> Class {
    let mut parser = Parser::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let takes_value = takes_value(arg);
        let value = if takes_value { args.get(i + 1).cloned() } else { None };
        if takes_value && value.is_none() {
            return Class::Passthrough(Reason::Malformed);
        }
        if let Some(early) = parser.take(arg, value.as_deref()) {
            return early;
        }
        i += if takes_value { 2 } else { 1 };
    }
    match parser.finish(compiler_name) {
        Class::Distribute(mut unit) => {
            unit.source_args = source_args(args);
            unit.deps = deps_of(args, &unit);
            Class::Distribute(unit)
        }
        other => other,
    }
}

/// The dependency file `args` ask for, with the file name and target the driver would give.
fn deps_of(args: &[String], unit: &Unit) -> Deps {
    let mut user_only = None;
    let mut file = None;
    let mut targets = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        match arg {
            "-MD" => user_only = Some(false),
            "-MMD" => user_only = Some(true),
            "-MP" => targets.push(arg.to_string()),
            "-MG" => return Deps::Unsupported("-MG".into()),
            "-MF" | "-MT" | "-MQ" => {
                let value = args.get(i).cloned().unwrap_or_default();
                i += 1;
                if arg == "-MF" {
                    file = Some(value);
                } else {
                    targets.extend([arg.to_string(), value]);
                }
            }
            _ if arg.starts_with("-Wp,") && arg.contains(",-M") => {
                return Deps::Unsupported(format!("{arg}: only the preprocessor writes that"));
            }
            _ if arg.starts_with("-MF") => file = Some(arg[3..].to_string()),
            _ if arg.starts_with("-MT") || arg.starts_with("-MQ") => {
                targets.extend([arg[..3].to_string(), arg[3..].to_string()]);
            }
            _ if takes_value(arg) => i += 1,
            _ => {}
        }
    }
    let Some(user_only) = user_only else { return Deps::None };
    // The driver's defaults for -MD with -c, as the preprocessing step is told (dep_args).
    let mut defaults = unit.dep_args.iter();
    while let Some(arg) = defaults.next() {
        match arg.as_str() {
            "-MF" if file.is_none() => file = defaults.next().cloned(),
            "-MQ" if !targets.iter().any(|t| t == "-MT" || t == "-MQ") => {
                targets.extend(["-MQ".to_string(), defaults.next().cloned().unwrap_or_default()]);
            }
            _ => {}
        }
    }
    match file {
        Some(file) => Deps::File { user_only, file, targets },
        None => Deps::Unsupported("no dependency file name".into()),
    }
}

/// `args` without `-o` and the dependency-file options (`-MD`, `-MMD`, `-MF`, `-MT`, `-MQ`,
/// `-MP`, and their `-Wp,` forms): what a worker runs in source mode. gcc records none of
/// them in the object, so dropping them changes nothing in it.
pub fn source_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        match arg {
            "-o" | "-MF" | "-MT" | "-MQ" => i += 1,
            "-MD" | "-MMD" | "-MP" => {}
            _ if arg.starts_with("-o") => {}
            _ if ["-MF", "-MT", "-MQ"].iter().any(|p| arg.starts_with(p)) => {}
            _ if takes_value(arg) => {
                out.push(arg.to_string());
                if let Some(v) = args.get(i) {
                    out.push(v.clone());
                }
                i += 1;
            }
            _ => match arg.strip_prefix("-Wp,") {
                Some(list) => {
                    let mut kept = Vec::new();
                    let mut parts = list.split(',');
                    while let Some(part) = parts.next() {
                        match part {
                            "-MD" | "-MMD" | "-MF" | "-MT" | "-MQ" => {
                                parts.next();
                            }
                            "-MP" => {}
                            p => kept.push(p),
                        }
                    }
                    if !kept.is_empty() {
                        out.push(format!("-Wp,{}", kept.join(",")));
                    }
                }
                None => out.push(arg.to_string()),
            },
        }
    }
    out
}

#[derive(Default)]
struct Parser {
    mode: Option<OutputKind>,
    output: Option<String>,
    language_override: Option<Option<Language>>,
    sources: Vec<(String, Option<Language>)>,
    other_inputs: usize,
    cpp_args: Vec<String>,
    compile_args: Vec<String>,
    local_reason: Option<LocalReason>,
    debug: bool,
    switches_unrecorded: bool,
    has_md: bool,
    has_mf: bool,
    has_target: bool,
}

impl Parser {
    fn local(&mut self, kind: Reason, detail: impl Into<String>) {
        if self.local_reason.is_none() {
            self.local_reason = Some(LocalReason::new(kind, detail));
        }
    }

    fn both(&mut self, arg: &str, value: Option<&str>) {
        for list in [&mut self.cpp_args, &mut self.compile_args] {
            list.push(arg.to_string());
            if let Some(v) = value {
                list.push(v.to_string());
            }
        }
    }

    fn cpp(&mut self, arg: &str, value: Option<&str>) {
        self.cpp_args.push(arg.to_string());
        if let Some(v) = value {
            self.cpp_args.push(v.to_string());
        }
    }

    /// Handles one argument; returns a final class when the call is decided early.
    fn take(&mut self, arg: &str, value: Option<&str>) -> Option<Class> {
        if !arg.starts_with('-') || arg == "-" {
            if arg == "-" {
                self.local(Reason::StandardStreams, "source from standard input");
            }
            if arg.starts_with('@') {
                self.local(Reason::StandardStreams, "response file (@file)");
                self.other_inputs += 1;
                return None;
            }
            let lang = match self.language_override {
                Some(explicit) => explicit,
                None => source_language(arg),
            };
            if self.language_override.is_some() || source_language(arg).is_some() {
                self.sources.push((arg.to_string(), lang));
            } else {
                self.other_inputs += 1;
            }
            return None;
        }
        match arg {
            "-c" => self.mode = Some(OutputKind::Object),
            "-S" => self.mode = Some(OutputKind::Assembly),
            "-E" | "-M" | "-MM" => return Some(Class::Passthrough(Reason::Preprocess)),
            "-o" => {
                let out = value.unwrap_or_default();
                if out == "-" {
                    self.local(Reason::StandardStreams, "output to standard output");
                }
                self.output = Some(out.to_string());
            }
            "-x" => {
                self.language_override = match value.unwrap_or_default() {
                    "none" => None,
                    "c" => Some(Some(Language::C)),
                    "c++" => Some(Some(Language::Cxx)),
                    other => {
                        self.local(Reason::Language, format!("language -x {other}"));
                        Some(None)
                    }
                };
                self.cpp(arg, value);
            }
            "-MD" | "-MMD" => {
                self.has_md = true;
                self.cpp(arg, None);
            }
            "-MF" => {
                self.has_mf = true;
                self.cpp(arg, value);
            }
            "-MT" | "-MQ" => {
                self.has_target = true;
                self.cpp(arg, value);
            }
            "-MP" | "-MG" | "-nostdinc" | "-nostdinc++" | "-undef" => self.cpp(arg, None),
            "-C"
            | "-CC"
            | "-P"
            | "-H"
            | "-traditional-cpp"
            | "-fpreprocessed"
            | "-fdirectives-only"
            | "-frecord-gcc-switches"
            | "-v"
            | "-###"
            | "-gsplit-dwarf"
            | "-fsyntax-only"
            | "-fstack-usage"
            | "-ftest-coverage"
            | "--coverage"
            | "-fprofile-arcs"
            | "-fbranch-probabilities"
            | "-fcallgraph-info"
            | "-pipe-debug" => {
                self.local(Reason::RefusedArgument, format!("option {arg}"));
            }
            "-gno-record-gcc-switches" => {
                self.switches_unrecorded = true;
                self.both(arg, None);
            }
            "-grecord-gcc-switches" => {
                self.switches_unrecorded = false;
                self.both(arg, None);
            }
            _ if takes_value(arg) => {
                if CPP_WITH_VALUE.contains(&arg) {
                    self.cpp(arg, value);
                } else if matches!(arg, "-Xassembler" | "-Xlinker" | "-L" | "-l" | "-u" | "-z") {
                    self.both(arg, value);
                } else {
                    self.local(Reason::RefusedArgument, format!("option {arg}"));
                }
            }
            _ => self.take_prefixed(arg),
        }
        None
    }

    fn take_prefixed(&mut self, arg: &str) {
        let cpp_prefixes = [
            "-I",
            "-D",
            "-U",
            "-isystem",
            "-iquote",
            "-idirafter",
            "-MF",
            "-MT",
            "-MQ",
            "-Wp,",
            "-isysroot",
            "--sysroot=",
        ];
        if cpp_prefixes.iter().any(|p| arg.starts_with(p)) {
            if arg.starts_with("-MF") {
                self.has_mf = true;
            }
            if arg.starts_with("-MT") || arg.starts_with("-MQ") {
                self.has_target = true;
            }
            self.cpp(arg, None);
            return;
        }
        if arg.starts_with("-M") {
            return self.local(Reason::RefusedArgument, format!("dependency option {arg}"));
        }
        if let Some(file) = arg.strip_prefix("-specs=") {
            return self.shipped_file(arg, "-specs=", file);
        }
        if let Some(plugin) = arg.strip_prefix("-fplugin=") {
            if !plugin.contains('/') {
                // A bare name: gcc's plugin directory, which the shipped toolchain includes.
                return self.both(arg, None);
            }
            return self.shipped_file(arg, "-fplugin=", plugin);
        }
        let refused_prefixes = [
            "-B",
            "-specs",
            "-save-temps",
            "-fdump-",
            "-d",
            "-wrapper",
            "-fprofile-",
            "-fauto-profile",
            "-fcompare-debug",
            "-fdebug-prefix-map",
            "-ffile-prefix-map",
            "-fmacro-prefix-map",
            "-iplugindir",
            "-fworking-directory",
        ];
        if arg == "-frandom-seed" {
            // gcc 12 rejects it without a value: let the local compiler say so.
            return self.local(Reason::RefusedArgument, format!("option {arg}"));
        }
        if refused_prefixes.iter().any(|p| arg.starts_with(p)) {
            return self.local(Reason::RefusedArgument, format!("option {arg}"));
        }
        if arg.ends_with("=native") {
            return self.local(Reason::NativeCpu, format!("option {arg}"));
        }
        if let Some(level) = arg.strip_prefix("-g") {
            self.debug = !matches!(level, "0" | "gdb0") && !level.starts_with("no-");
            return self.both(arg, None);
        }
        if let Some(wa) = arg.strip_prefix("-Wa,") {
            if wa.split(',').any(|a| a.starts_with("-a") || a == "--MD" || a.starts_with("--MD")) {
                return self
                    .local(Reason::RefusedArgument, "assembler listing or dependency output");
            }
            return self.both(arg, None);
        }
        let compile_prefixes =
            ["-f", "-m", "-W", "-O", "-std=", "-w", "-pedantic", "-ansi", "-Wl,", "-l", "-L"];
        let compile_exact =
            ["-pipe", "-pthread", "-p", "-pg", "-fPIC", "-shared", "-static", "-pie"];
        if compile_prefixes.iter().any(|p| arg.starts_with(p)) || compile_exact.contains(&arg) {
            return self.both(arg, None);
        }
        if arg.starts_with("-trigraphs") {
            return self.both(arg, None);
        }
        if arg.starts_with("--help")
            || arg.starts_with("--version")
            || arg.starts_with("-dump")
            || arg.starts_with("-print-")
        {
            self.other_inputs += 1;
            return self.local(Reason::Informational, format!("informational option {arg}"));
        }
        self.local(Reason::UnsupportedFlag, format!("unrecognised option {arg}"));
    }

    /// A `-specs=`/`-fplugin=` file: shipped with the toolchain, so the worker needs its
    /// absolute path; the preprocessing step keeps the argument as written.
    fn shipped_file(&mut self, arg: &str, prefix: &str, file: &str) {
        let path = Path::new(file);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            match std::env::current_dir() {
                Ok(cwd) if cwd.join(path).is_file() => cwd.join(path),
                _ => {
                    return self.local(
                        Reason::RefusedArgument,
                        format!("{arg}: file found through gcc's search path"),
                    );
                }
            }
        };
        self.cpp_args.push(arg.to_string());
        self.compile_args.push(format!("{prefix}{}", absolute.display()));
    }

    fn finish(mut self, compiler_name: &str) -> Class {
        let Some(mode) = self.mode else {
            return Class::Passthrough(Reason::Link);
        };
        if self.sources.len() + self.other_inputs == 0 {
            return Class::Passthrough(Reason::NoInput);
        }
        if self.sources.len() != 1 || self.other_inputs != 0 {
            return Class::Local(LocalReason::new(
                Reason::SeveralSources,
                "not exactly one C/C++ source",
            ));
        }
        let (source, lang) = self.sources.remove(0);
        let default_cxx = compiler_name.contains("++");
        let language = match lang {
            Some(Language::C) if default_cxx && self.language_override.is_none() => Language::Cxx,
            Some(l) => l,
            None => {
                return Class::Local(LocalReason::new(
                    Reason::Language,
                    format!("{source}: not a C or C++ source"),
                ));
            }
        };
        if let Some(reason) = self.local_reason {
            return Class::Local(reason);
        }
        let file = Path::new(&source).file_name().and_then(|f| f.to_str()).unwrap_or_default();
        if file.starts_with("conftest.") || file.starts_with("tmp.conftest.") {
            return Class::Local(LocalReason::new(Reason::Conftest, "autoconf test (conftest)"));
        }
        // With -g, gcc records its cc1 switches in DW_AT_producer; a preprocessed unit's
        // -fdirectives-only would appear there (and reorder .debug_str): only source mode,
        // which runs the build's own command, gives the same object.
        let needs_sources = self.debug && !self.switches_unrecorded;
        let output = match &self.output {
            Some(out) => PathBuf::from(out),
            None => {
                let stem = Path::new(file).file_stem().and_then(|s| s.to_str()).unwrap_or("a");
                let ext = if mode == OutputKind::Object { "o" } else { "s" };
                PathBuf::from(format!("{stem}.{ext}"))
            }
        };
        let mut dep_args = Vec::new();
        if self.has_md {
            if !self.has_mf {
                dep_args.push("-MF".to_string());
                dep_args.push(dep_file_for(&output, self.output.is_some(), file));
            }
            if !self.has_target {
                dep_args.push("-MQ".to_string());
                dep_args.push(output.to_string_lossy().into_owned());
            }
        }
        let mut cpp_args = self.cpp_args;
        cpp_args.push(source.clone());
        Class::Distribute(Unit {
            source,
            language,
            output_kind: mode,
            output,
            cpp_args,
            compile_args: self.compile_args,
            dep_args,
            source_args: Vec::new(),
            needs_sources,
            deps: Deps::None,
        })
    }
}

/// Where gcc's driver puts the `-MD` file: next to `-o` with its suffix replaced, else `<stem>.d`.
fn dep_file_for(output: &Path, explicit_output: bool, source_file: &str) -> String {
    if explicit_output {
        output.with_extension("d").to_string_lossy().into_owned()
    } else {
        let stem = Path::new(source_file).file_stem().and_then(|s| s.to_str()).unwrap_or("a");
        format!("{stem}.d")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &str) -> Vec<String> {
        args.split_whitespace().map(String::from).collect()
    }

    fn unit(args: &str) -> Unit {
        match classify("gcc", &v(args)) {
            Class::Distribute(u) => u,
            other => panic!("{args}: expected distributable, got {other:?}"),
        }
    }

    fn is_local(args: &str) -> bool {
        matches!(classify("gcc", &v(args)), Class::Local(_))
    }

    fn is_passthrough(args: &str) -> bool {
        matches!(classify("gcc", &v(args)), Class::Passthrough(_))
    }

    #[test]
    fn simple_compile_splits_cpp_and_compile_args() {
        let u = unit("-O2 -Wall -Iinc -DX=1 -include cfg.h -c src/a.c -o obj/a.o");
        assert_eq!(u.source, "src/a.c");
        assert_eq!(u.output, PathBuf::from("obj/a.o"));
        assert_eq!(u.language, Language::C);
        assert_eq!(u.compile_args, v("-O2 -Wall"));
        assert_eq!(u.cpp_args, v("-O2 -Wall -Iinc -DX=1 -include cfg.h src/a.c"));
        assert!(u.dep_args.is_empty());
    }

    #[test]
    fn default_output_and_assembly() {
        assert_eq!(unit("-c dir/x.cpp").output, PathBuf::from("x.o"));
        let s = unit("-S x.c");
        assert_eq!(s.output, PathBuf::from("x.s"));
        assert_eq!(s.output_kind, OutputKind::Assembly);
        assert_eq!(unit("-c x.cpp").language, Language::Cxx);
    }

    #[test]
    fn cxx_driver_compiles_c_files_as_cxx() {
        let Class::Distribute(u) = classify("g++", &v("-c x.c")) else { panic!() };
        assert_eq!(u.language, Language::Cxx);
        let Class::Distribute(u) = classify("g++", &v("-x c -c x.c")) else { panic!() };
        assert_eq!(u.language, Language::C);
    }

    #[test]
    fn dependency_files_follow_the_driver() {
        let u = unit("-MD -c a.c -o obj/a.o");
        assert_eq!(u.dep_args, v("-MF obj/a.d -MQ obj/a.o"));
        let u = unit("-MMD -MF x.d -c a.c");
        assert_eq!(u.dep_args, v("-MQ a.o"));
        let u = unit("-MD -MT t -c a.c");
        assert_eq!(u.dep_args, v("-MF a.d"));
        assert!(unit("-c a.c -MP").dep_args.is_empty());
    }

    #[test]
    fn non_compiles_pass_through() {
        assert!(is_passthrough("a.o b.o -o prog"));
        assert!(is_passthrough("-E a.c"));
        assert!(is_passthrough("-M a.c"));
        assert!(is_passthrough("--version"));
        assert!(is_passthrough("-c"));
    }

    #[test]
    fn unsafe_or_unknown_compiles_stay_local() {
        for args in [
            "-c a.c b.c",
            "-c conftest.c",
            "-march=native -c a.c",
            "-fprofile-generate -c a.c",
            "--coverage -c a.c",
            "-c a.c -o -",
            "-wrapper /bin/sh,-c,touch -c a.c",
            "@args -c a.c",
            "-specs=no-such.specs -c a.c",
            "-specs /x.specs -c a.c",
            "-B/tmp -c a.c",
            "-save-temps -c a.c",
            "-frandom-seed -c a.c",
            "-x assembler-with-cpp -c a.S",
            "-c a.s",
            "-c - ",
            "--frobnicate -c a.c",
            "-frecord-gcc-switches -c a.c",
            "-c a.i",
            "-gsplit-dwarf -gno-record-gcc-switches -c a.c",
            "-Wa,-adhln=x.lst -c a.c",
            "-c a.c x.o",
        ] {
            assert!(is_local(args), "{args} should be local: {:?}", classify("gcc", &v(args)));
        }
    }

    #[test]
    fn specs_and_plugins_distribute_with_absolute_paths() {
        let u = unit("-specs=/usr/lib/rpm/redhat/redhat-hardened-cc1 -fplugin=annobin -c a.c");
        assert_eq!(
            u.compile_args,
            v("-specs=/usr/lib/rpm/redhat/redhat-hardened-cc1 -fplugin=annobin")
        );
        let u = unit("-fplugin=/opt/p/x.so -fplugin-arg-x-k=v -c a.c");
        assert_eq!(u.compile_args, v("-fplugin=/opt/p/x.so -fplugin-arg-x-k=v"));
    }

    #[test]
    fn every_lto_form_distributes() {
        for lto in ["-flto", "-flto=auto", "-flto=4", "-flto=jobserver"] {
            for fat in ["-ffat-lto-objects", "-fno-fat-lto-objects"] {
                let u = unit(&format!("-O2 {lto} {fat} -frandom-seed=a.o -c a.c"));
                assert_eq!(u.compile_args, v(&format!("-O2 {lto} {fat} -frandom-seed=a.o")));
            }
        }
        assert!(is_local("-frandom-seed -c a.c"));
    }

    #[test]
    fn debug_without_recorded_switches_distributes() {
        let u = unit("-g -gno-record-gcc-switches -c a.c");
        assert_eq!(u.compile_args, v("-g -gno-record-gcc-switches"));
        assert!(!is_local("-g0 -c a.c"));
        assert!(!u.needs_sources);
    }

    #[test]
    fn debug_with_recorded_switches_needs_source_mode() {
        for args in ["-g -c a.c", "-O2 -g3 -c a.c", "-g -grecord-gcc-switches -c a.c"] {
            assert!(unit(args).needs_sources, "{args}");
        }
    }

    #[test]
    fn dependency_files_as_the_driver_names_them() {
        assert_eq!(unit("-c a.c").deps, Deps::None);
        let file = |user_only, file: &str, targets: &str| Deps::File {
            user_only,
            file: file.into(),
            targets: v(targets),
        };
        assert_eq!(unit("-MD -c src/a.c -o out/a.o").deps, file(false, "out/a.d", "-MQ out/a.o"));
        assert_eq!(unit("-MMD -MP -c a.c").deps, file(true, "a.d", "-MP -MQ a.o"));
        assert_eq!(
            unit("-MT x.o -MD -MP -MF .deps/x.Tpo -c x.c -o x.o").deps,
            file(false, ".deps/x.Tpo", "-MT x.o -MP")
        );
        assert!(matches!(unit("-Wp,-MD,a.d -c a.c").deps, Deps::Unsupported(_)));
    }

    #[test]
    fn source_args_drop_output_and_dependency_options() {
        let u = unit(
            "-O2 -MD -MF x.d -MT t -MQ q -MP -Wp,-MD,y.d,-D_FORTIFY_SOURCE=2 -Wp,-MMD,z.d \
             -I inc -DX=1 -c a.c -o out/a.o",
        );
        assert_eq!(u.source_args, v("-O2 -Wp,-D_FORTIFY_SOURCE=2 -I inc -DX=1 -c a.c"));
        assert_eq!(unit("-c a.c -o a.o -MFx.d").source_args, v("-c a.c"));
    }

    #[test]
    fn recorded_debug_info_is_cacheable_and_distributable() {
        assert!(!is_local("-g -c a.c"));
        assert!(cacheable("gcc", &v("-O2 -g -c a.c")).is_some());
        assert!(cacheable("gcc", &v("-gsplit-dwarf -c a.c")).is_none());
        assert!(cacheable("gcc", &v("a.o -o prog")).is_none());
    }

    #[test]
    fn missing_option_value_passes_through() {
        assert!(is_passthrough("-c a.c -o"));
    }
}
