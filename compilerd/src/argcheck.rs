//! The worker's allow-list for compile-step arguments.
//!
//! A worker runs a compiler with arguments a client chose, so every argument must have a shape
//! we know to be harmless: no way to run another program (`-wrapper`, `-B`, plugins, specs), read
//! files (`@file`), or write anywhere but the unit's private directory (`-o`, dump and temp
//! options). Input and output are always the worker's own.

/// Checks compile-step arguments; `Err` says which argument was refused and why.
pub fn check_compile_args(args: &[String]) -> Result<(), String> {
    for arg in args {
        if let Some(reason) = refusal(arg) {
            return Err(format!("argument `{arg}` refused: {reason}"));
        }
    }
    Ok(())
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
        ("-flto", "not reproducible remotely"),
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
    if arg == "-fno-lto" {
        return None;
    }
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

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn ordinary_flags_pass() {
        assert!(check_compile_args(&v("-O2 -Wall -Wextra -std=gnu99 -fPIC -m64 -g -gno-record-gcc-switches -pipe -Wa,--noexecstack")).is_ok());
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
            assert!(check_compile_args(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
