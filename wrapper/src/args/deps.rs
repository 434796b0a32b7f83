//! What a call asks of dependency files, as a compile (not a preprocessing run) would write
//! them, and the build's own arguments without the output and dependency-file options (what a
//! worker runs in source mode).

use super::*;

/// The dependency file `args` ask for, with the file name and target the driver would give.
pub(super) fn deps_of(args: &[String], unit: &Unit) -> Deps {
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
