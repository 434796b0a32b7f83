//! The compiler's own header search directories (`gcc -E -v` prints them), cached per compiler
//! identity, language and the options that change them, so the include scanner needs no
//! compiler run per unit.

use std::path::Path;
use std::process::Stdio;

use discomy_protocol::{Digest, Language};

/// Options that change the system directories (the rest do not, or the scanner reads them).
fn relevant(arg: &str) -> bool {
    [
        "-nostdinc",
        "--sysroot",
        "-isysroot",
        "-m32",
        "-m64",
        "-mx32",
        "-nostdlib",
        "-std=",
        "-stdlib=",
    ]
    .iter()
    .any(|p| arg.starts_with(p))
}

/// The system include directories of `compiler` for `language` and `args`.
pub fn system_dirs(
    compiler: &Path,
    identity: &Digest,
    language: Language,
    args: &[String],
    child_path: &std::ffi::OsStr,
) -> Result<Vec<String>, String> {
    let mut key_args: Vec<&str> = args.iter().map(String::as_str).filter(|a| relevant(a)).collect();
    let lang = match language {
        Language::C => "c",
        Language::Cxx => "c++",
    };
    key_args.push(lang);
    let key = Digest::of(format!("{identity}\0{}", key_args.join("\0")).as_bytes());
    let cache = crate::identity::cache_dir().join("sysdirs").join(key.to_hex());
    if let Ok(text) = std::fs::read_to_string(&cache) {
        return Ok(text.lines().map(String::from).collect());
    }
    let out = std::process::Command::new(compiler)
        .args(key_args[..key_args.len() - 1].iter())
        .args(["-E", "-v", "-x", lang, "/dev/null", "-o", "/dev/null"])
        .env("PATH", child_path)
        .env(crate::ENV_SAFEGUARD, "1")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("run {} -E -v: {e}", compiler.display()))?;
    if !out.status.success() {
        return Err(format!("{} -E -v failed", compiler.display()));
    }
    let dirs = parse(&String::from_utf8_lossy(&out.stderr))?;
    if let Some(parent) = cache.parent() {
        let _ = std::fs::create_dir_all(parent);
        let _ = discomy_protocol::plumbing::write_atomically(&cache, dirs.join("\n").as_bytes());
    }
    Ok(dirs)
}

/// The directories listed between `#include "..." search starts here:` and
/// `End of search list.`, normalised.
fn parse(text: &str) -> Result<Vec<String>, String> {
    let mut dirs = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("#include \"...\" search starts here:") {
            inside = true;
        } else if line.starts_with("End of search list.") {
            return Ok(dirs);
        } else if inside && line.starts_with(' ') {
            let dir = line.trim().trim_end_matches(" (framework directory)");
            dirs.extend(crate::sources::normalise(dir));
        }
    }
    Err("no search list in the compiler's -v output".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gcc_search_list() {
        let text = "ignoring nonexistent directory \"/x\"\n#include \"...\" search starts here:\n\
#include <...> search starts here:\n /usr/lib/gcc/x86_64-linux-gnu/12/include\n \
/usr/local/include\n /usr/include/x86_64-linux-gnu\n /usr/include\nEnd of search list.\n";
        assert_eq!(
            parse(text).unwrap(),
            [
                "/usr/lib/gcc/x86_64-linux-gnu/12/include",
                "/usr/local/include",
                "/usr/include/x86_64-linux-gnu",
                "/usr/include"
            ]
        );
        assert!(parse("nothing").is_err());
    }
}
