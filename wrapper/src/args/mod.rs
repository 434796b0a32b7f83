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

mod deps;

use deps::deps_of;
pub use deps::source_args;

#[cfg(test)]
mod tests;
