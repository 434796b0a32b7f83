//! What a package needs and gives, read from its spec's text for the batch's build order:
//! `BuildRequires` names (versions and rich dependencies dropped), and the names its RPMs provide
//! (`Name`, each `%package`, explicit `Provides`). No macro is evaluated beyond `%global` and
//! `%define` with plain values and the `Name`/`Version`/`Release` tags, so reading a hostile spec
//! runs nothing; a name still holding a macro is left out (the order can then be wrong, never
//! the build: a job built too early fails on its missing dependency, loudly).
//!
//! Shared by `discomy submit` (which, for a source RPM, reads the spec inside it with
//! `rpm2cpio | cpio`: the user's own file, on the user's machine) and the coordinator's
//! job_listener (specs of a pushed repository: text only, nothing run on the coordinator).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// What the spec says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecDeps {
    /// The source package's name.
    pub name: String,
    /// `BuildRequires` names.
    pub requires: Vec<String>,
    /// Names the binary packages provide.
    pub provides: Vec<String>,
}

/// Reads a spec's text.
pub fn parse(text: &str) -> SpecDeps {
    let mut macros: BTreeMap<String, String> = BTreeMap::new();
    let mut deps = SpecDeps::default();
    let mut packages = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("%global" | "%define") => {
                if let (Some(name), Some(value)) = (words.next(), words.next()) {
                    if !name.contains('(') && words.next().is_none() {
                        let value = expand(value, &macros);
                        macros.insert(name.to_owned(), value);
                    }
                }
                continue;
            }
            Some("%package") => {
                let rest: Vec<&str> = words.collect();
                match rest.as_slice() {
                    ["-n", name, ..] => packages.push((true, (*name).to_owned())),
                    [suffix, ..] => packages.push((false, (*suffix).to_owned())),
                    [] => {}
                }
                continue;
            }
            _ => {}
        }
        let Some((tag, value)) = line.split_once(':') else { continue };
        let tag = tag.trim().to_ascii_lowercase();
        let value = value.trim();
        match tag.as_str() {
            "name" => {
                deps.name = expand(value, &macros);
                macros.insert("name".into(), deps.name.clone());
            }
            "version" => {
                macros.insert("version".into(), expand(value, &macros));
            }
            "release" => {
                macros.insert("release".into(), expand(value, &macros));
            }
            "buildrequires" => deps.requires.extend(names(&expand(value, &macros))),
            "provides" => deps.provides.extend(names(&expand(value, &macros))),
            _ => {}
        }
    }
    if !deps.name.is_empty() {
        deps.provides.insert(0, deps.name.clone());
    }
    for (whole, name) in packages {
        let name = expand(&name, &macros);
        deps.provides.push(if whole { name } else { format!("{}-{name}", deps.name) });
    }
    for list in [&mut deps.requires, &mut deps.provides] {
        list.retain(|n| !n.contains('%') && !n.is_empty());
        let mut seen = std::collections::BTreeSet::new();
        list.retain(|n| seen.insert(n.clone()));
    }
    deps
}

/// Replaces `%{name}`, `%name`, `%{?name}` of known macros; `%{?x}` of unknown ones goes away.
fn expand(text: &str, macros: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (body, after, braced) = match rest.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..], true),
                None => ("", rest, false),
            },
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..], false)
            }
        };
        let optional = body.starts_with('?');
        let key = body.trim_start_matches(['?', '!']);
        match macros.get(key) {
            Some(value) if !body.contains(':') => out.push_str(value),
            None if optional && !key.contains(':') => {}
            _ => {
                // Unknown: kept, so the name is dropped later.
                out.push('%');
                if braced {
                    out.push('{');
                    out.push_str(body);
                    out.push('}');
                } else {
                    out.push_str(body);
                }
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The names of a dependency list: `a, b >= 1.0 c` → a, b, c; rich dependencies `( … )` and
/// file paths are left out.
fn names(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut skip_version = false;
    for token in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()) {
        let opens = token.matches('(').count();
        let closes = token.matches(')').count();
        if depth > 0 || token.starts_with('(') {
            depth = (depth + opens).saturating_sub(closes);
            continue;
        }
        if matches!(token, "=" | ">=" | "<=" | ">" | "<") {
            skip_version = true;
            continue;
        }
        if skip_version {
            skip_version = false;
            continue;
        }
        if !token.starts_with('/') && opens == closes {
            out.push(token.to_owned());
        }
    }
    out
}

/// The spec inside a source RPM, read with `rpm2cpio | cpio`; `None` when the tools are missing
/// or the archive holds no single spec.
pub fn spec_of_srpm(srpm: &Path) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("rpm2cpio \"$1\" | cpio -i --quiet --to-stdout '*.spec'")
        .arg("sh")
        .arg(srpm)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    (out.status.success() && !out.stdout.is_empty() && out.stdout.len() < (1 << 20))
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_without_running_anything() {
        let spec = "\
%global soname 5.4
Name:           lua-lpeg
Version:        1.0.2
Release:        1%{?dist}
BuildRequires:  gcc, make
BuildRequires:  lua-devel >= %{soname} pkgconfig(libfoo) (bar or baz)
BuildRequires:  %{undefined_thing}-devel /usr/bin/lua
Provides:       lpeg = %{version}
%description
x
%package devel
Summary: headers
%package -n lpeg-re
Summary: re
";
        let deps = parse(spec);
        assert_eq!(deps.name, "lua-lpeg");
        assert_eq!(deps.requires, ["gcc", "make", "lua-devel", "pkgconfig(libfoo)"]);
        assert_eq!(deps.provides, ["lua-lpeg", "lpeg", "lua-lpeg-devel", "lpeg-re"]);
    }

    #[test]
    fn the_test_specs_chain() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/rpm-projects");
        let read = |name: &str| {
            std::fs::read_to_string(root.join(name).join(format!("{name}.spec")))
                .map(|t| parse(&t))
                .unwrap_or_default()
        };
        let lua = read("lua");
        assert!(lua.provides.contains(&"lua-devel".to_owned()), "{lua:?}");
    }
}
