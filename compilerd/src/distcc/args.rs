//! What a distcc client's argv asks for: `COMPILER [options] SOURCE -c|-S -o OUTPUT`, the source
//! already preprocessed by the client. The worker keeps the options (checked by `argcheck` like a
//! native unit's), and substitutes its own input, output and `-x`.

/// One distcc job's command line, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistccArgs {
    /// The bare compiler name (`/usr/bin/` or `/bin/` stripped, as distccd does).
    pub compiler: String,
    /// Options other than input, output, `-c`/`-S` and `-x`.
    pub args: Vec<String>,
    /// The source's name as the client gave it (for logs).
    pub source: String,
    /// C++ rather than C.
    pub cxx: bool,
    /// `-S` rather than `-c`.
    pub assembly: bool,
}

impl DistccArgs {
    /// The file the worker writes the preprocessed source to.
    pub fn input_name(&self) -> &'static str {
        if self.cxx { "unit.ii" } else { "unit.i" }
    }

    /// What the compiler writes: an object, or assembly for `-S`.
    pub fn output_kind(&self) -> discomy_protocol::OutputKind {
        if self.assembly {
            discomy_protocol::OutputKind::Assembly
        } else {
            discomy_protocol::OutputKind::Object
        }
    }

    /// The file the compiler writes.
    pub fn output_name(&self) -> &'static str {
        if self.assembly { "unit.s" } else { "unit.o" }
    }

    /// The command line the worker runs: the client's options, then ours.
    pub fn compile_args(&self) -> Vec<String> {
        let lang = if self.cxx { "c++-cpp-output" } else { "cpp-output" };
        let mode = if self.assembly { "-S" } else { "-c" };
        let mut args = self.args.clone();
        args.extend(
            ["-x", lang, mode, self.input_name(), "-o", self.output_name()].map(String::from),
        );
        args
    }
}

/// Source suffixes distcc distributes, and whether each is C++. Objective-C is not compiled here.
fn language_of(source: &str) -> Option<bool> {
    let ext = source.rsplit_once('.')?.1;
    match ext {
        "c" | "i" => Some(false),
        "cc" | "cpp" | "cxx" | "cp" | "c++" | "C" | "ii" => Some(true),
        _ => None,
    }
}

/// Why a distcc client's argv is not compiled here (sent back to the client in `SERR`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvRefused {
    /// No compiler at all.
    #[error("empty command line")]
    Empty,
    /// A compiler given by a path other than `/usr/bin` or `/bin`.
    #[error("compiler `{0}` must be a bare name")]
    CompilerPath(String),
    /// An option without its value.
    #[error("{0} without a value")]
    NoValue(&'static str),
    /// Several sources.
    #[error("more than one source file")]
    SeveralSources,
    /// No C or C++ source.
    #[error("no source file with a C or C++ suffix")]
    NoSource,
    /// Not a compile.
    #[error("neither -c nor -S: only compiles are distributed")]
    NotACompile,
    /// No output named.
    #[error("no -o")]
    NoOutput,
    /// Another language.
    #[error("language `-x {0}` is not compiled here")]
    Language(String),
}

/// Takes a distcc argv apart; `Err` says why it cannot be compiled here.
pub fn parse_distcc_argv(argv: &[String]) -> Result<DistccArgs, ArgvRefused> {
    let (first, rest) = argv.split_first().ok_or(ArgvRefused::Empty)?;
    let compiler =
        first.strip_prefix("/usr/bin/").or_else(|| first.strip_prefix("/bin/")).unwrap_or(first);
    if compiler.is_empty() || compiler.contains('/') {
        return Err(ArgvRefused::CompilerPath(first.clone()));
    }
    let mut args = Vec::new();
    let (mut source, mut mode, mut lang, mut output) = (None, None, None, None);
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-c" | "-S" => mode = Some(arg == "-S"),
            "-o" => output = Some(it.next().ok_or(ArgvRefused::NoValue("-o"))?.clone()),
            "-x" => lang = Some(it.next().ok_or(ArgvRefused::NoValue("-x"))?.clone()),
            a if a.starts_with("-o") => output = Some(a[2..].to_string()),
            a if a.starts_with("-x") => lang = Some(a[2..].to_string()),
            a if !a.starts_with('-') && language_of(a).is_some() => {
                if source.replace(a.to_string()).is_some() {
                    return Err(ArgvRefused::SeveralSources);
                }
            }
            _ => args.push(arg.clone()),
        }
    }
    let source = source.ok_or(ArgvRefused::NoSource)?;
    let assembly = mode.ok_or(ArgvRefused::NotACompile)?;
    output.ok_or(ArgvRefused::NoOutput)?;
    let cxx = match lang.as_deref() {
        None => language_of(&source).unwrap_or(false),
        Some("c" | "cpp-output") => false,
        Some("c++" | "c++-cpp-output") => true,
        Some(other) => return Err(ArgvRefused::Language(other.to_string())),
    };
    Ok(DistccArgs { compiler: compiler.to_string(), args, source, cxx, assembly })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DistccArgs, ArgvRefused> {
        parse_distcc_argv(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn takes_the_captured_argv_apart() {
        let job = parse("x86_64-linux-gnu-gcc -O2 -c hello.c -o hello_p1.o").unwrap();
        assert_eq!(job.compiler, "x86_64-linux-gnu-gcc");
        assert_eq!(job.args, ["-O2"]);
        assert!(!job.cxx && !job.assembly);
        assert_eq!(job.compile_args().join(" "), "-O2 -x cpp-output -c unit.i -o unit.o");
        let job = parse("/usr/bin/g++ -std=c++17 -S x.cc -ox.s").unwrap();
        assert!(job.cxx && job.assembly && job.compiler == "g++");
        assert!(parse("gcc -x c++ -c x.c -o x.o").unwrap().cxx);
    }

    #[test]
    fn refuses_what_it_cannot_compile() {
        for bad in [
            "",
            "/opt/evil/gcc -c x.c -o x.o",
            "gcc x.c -o x",
            "gcc -c x.c y.c -o x.o",
            "gcc -c x.s -o x.o",
            "gcc -c x.c",
            "gcc -x assembler -c x.c -o x.o",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // Hostile options survive parsing; argcheck refuses them.
        let job = parse("gcc -wrapper /bin/sh,-c,id -c x.c -o x.o").unwrap();
        assert_eq!(job.args, ["-wrapper", "/bin/sh,-c,id"]);
    }
}
