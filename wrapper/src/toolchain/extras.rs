//! The extra toolchain files a command line needs: `-specs=` files (found as gcc finds them),
//! `-fplugin=` plugins, and the plugins named inside those specs files.

use super::*;

/// The extra toolchain files a command line needs: every `-specs=` file, every `-fplugin=`
/// plugin, and the plugins named inside those specs files (when they exist).
///
/// Specs files: absolute names as is; relative ones are looked up like gcc does, in the driver's
/// own directories (`DRIVER -print-file-name=NAME`) and then in the current directory. Plugins:
/// a bare name means `<plugin dir>/NAME.so` (`-iplugindir=`, else `DRIVER -print-file-name=plugin`),
/// anything with a `/` is a path. A specs file or plugin named on the command line that does not
/// exist is an error; one named inside a specs file may be conditional and is skipped.
pub fn extras_for_args(
    args: &[String],
    driver: &Path,
    path_var: &OsStr,
) -> Result<Vec<PathBuf>, ToolchainError> {
    let mut specs = Vec::new();
    let mut plugins = Vec::new();
    let mut plugin_dir_arg = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if let Some(v) = arg.strip_prefix("-specs=").or_else(|| arg.strip_prefix("--specs=")) {
            specs.push(v.to_string());
        } else if arg == "-specs" || arg == "--specs" {
            if let Some(v) = iter.next() {
                specs.push(v.clone());
            }
        } else if let Some(v) = arg.strip_prefix("-fplugin=") {
            plugins.push(v.to_string());
        } else if let Some(v) = arg.strip_prefix("-iplugindir=") {
            plugin_dir_arg = Some(PathBuf::from(v));
        }
    }
    if specs.is_empty() && plugins.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let push = |p: PathBuf, out: &mut Vec<PathBuf>| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    let mut plugin_dir = plugin_dir_arg;
    let mut spec_plugins = Vec::new();
    for name in &specs {
        let path = find_specs(name, driver, path_var)?;
        let text =
            fs::read(&path).map_err(|source| ToolchainError::Io { path: path.clone(), source })?;
        spec_plugins.extend(plugins_in_specs(&String::from_utf8_lossy(&text)));
        push(path, &mut out);
    }
    for (name, required) in
        plugins.iter().map(|p| (p, true)).chain(spec_plugins.iter().map(|p| (p, false)))
    {
        let path = if name.contains('/') {
            absolute(Path::new(name))?
        } else {
            if plugin_dir.is_none() {
                plugin_dir =
                    Some(PathBuf::from(query(driver, path_var, "-print-file-name=plugin")?));
            }
            plugin_dir.as_deref().unwrap_or(Path::new("")).join(format!("{name}.so"))
        };
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => push(path, &mut out),
            _ if !required => tracing::debug!(plugin = %path.display(), "plugin from specs absent"),
            _ => return Err(ToolchainError::NotFound { what: "plugin", name: name.clone() }),
        }
    }
    Ok(out)
}

/// Resolves a `-specs=` argument the way gcc does: absolute as is; otherwise gcc's own
/// directories first, then the current directory.
pub(super) fn find_specs(
    name: &str,
    driver: &Path,
    path_var: &OsStr,
) -> Result<PathBuf, ToolchainError> {
    let not_found = || ToolchainError::NotFound { what: "specs file", name: name.to_string() };
    if name.is_empty() {
        return Err(not_found());
    }
    let given = Path::new(name);
    if given.is_absolute() {
        return if given.is_file() { Ok(given.to_path_buf()) } else { Err(not_found()) };
    }
    let answer = PathBuf::from(query(driver, path_var, &format!("-print-file-name={name}"))?);
    if answer.is_absolute() && answer.is_file() {
        return Ok(answer);
    }
    let local = absolute(given)?;
    if local.is_file() { Ok(local) } else { Err(not_found()) }
}

/// The `-fplugin=NAME` tokens in a specs file's text.
pub(super) fn plugins_in_specs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("-fplugin=") {
        let rest = &text[at + "-fplugin=".len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '}' | '{' | '%' | '|' | ';' | '"'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if !name.is_empty() && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}
