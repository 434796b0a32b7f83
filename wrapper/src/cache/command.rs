//! `discomy-cc --stats | --zero-stats | --clear | --cleanup | --max-size SIZE`: looking after
//! the local tier, ccache-like. The statistics are the command's output, so they go to stdout.

use std::io::Write;
use std::process::ExitCode;

use super::stats;

/// The cache commands, by their flag.
pub const COMMANDS: &[&str] = &["--stats", "--zero-stats", "--clear", "--cleanup", "--max-size"];

/// Parses `5G`, `500M`, `64K`, `123` (bytes). Powers of 1024.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mul) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&t[..i], 1 << 20),
        (i, 'G' | 'g') => (&t[..i], 1 << 30),
        (i, 'T' | 't') => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// Runs a cache command if `args` is one; `None` otherwise.
pub fn run(args: &[String]) -> Option<ExitCode> {
    let first = args.first()?.as_str();
    if !COMMANDS.contains(&first) {
        return None;
    }
    let store = super::local_store();
    let text = match first {
        "--stats" => {
            format!(
                "cache directory {}\n{}",
                store.root().display(),
                stats::read(store.root()).render(store.max_size())
            )
        }
        "--zero-stats" => {
            stats::zero(store.root());
            "statistics zeroed\n".to_string()
        }
        "--clear" => format!("removed {} entries\n", store.clear()),
        "--cleanup" => {
            let (n, size) = store.cleanup(store.max_size());
            format!("removed {n} entries, {size} bytes left\n")
        }
        _ => {
            let Some(size) = args.get(1).and_then(|s| parse_size(s)) else {
                return Some(crate::report(
                    "discomy-cc: --max-size SIZE (e.g. 5G, 500M)",
                    crate::EXIT_USAGE,
                ));
            };
            let _ = std::fs::create_dir_all(store.root());
            if let Err(e) = std::fs::write(store.root().join("max_size"), format!("{size}\n")) {
                return Some(crate::report(&format!("discomy-cc: {e}"), 1));
            }
            let (n, _) = super::store::Store::new(store.root().to_path_buf(), size).cleanup(size);
            format!("max size set to {size} bytes ({n} entries evicted)\n")
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    Some(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5G"), Some(5 << 30));
        assert_eq!(parse_size("500M"), Some(500 << 20));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("x"), None);
    }
}
