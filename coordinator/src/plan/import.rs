//! Package lists for `discomy plan`: a Debian `Sources` index (source packages, `Binary`,
//! `Build-Depends*`, tarball sizes), a repoquery-style text file (`pkg: dep dep`), or a workload
//! JSON with costs; build-order cycles found (reported, or broken on request) and a selection
//! closed over its dependencies.

use std::collections::{HashMap, HashSet};

use super::PlanError;
use super::estimate::{Language, SourceFacts};
use super::workload::{MAX_PACKAGES, Package, Workload};

/// At most this many bytes of package list (the whole of Debian's Sources is ~50 MB).
pub const MAX_LIST_BYTES: usize = 512 << 20;
/// At most this many dependencies per package.
pub const MAX_DEPS: usize = 10_000;

/// A package list before costs: names, dependencies, what is known of the sources.
#[derive(Debug, Clone, Default)]
pub struct PackageList {
    /// Packages in file order; dependencies name other packages of the list (others dropped).
    pub packages: Vec<(String, Vec<String>, SourceFacts)>,
    /// What was dropped or assumed while reading.
    pub notes: Vec<String>,
}

fn too_big(text: &str) -> Result<(), PlanError> {
    if text.len() > MAX_LIST_BYTES {
        return Err(PlanError::Invalid(format!(
            "the package list is {} bytes: more than {MAX_LIST_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// Parses a repoquery-style list: `name: dep dep …` per line (`#` comments, blank lines; a
/// name alone has no dependencies). Dependencies outside the list are dropped (noted).
pub fn parse_repoquery(text: &str) -> Result<PackageList, PlanError> {
    too_big(text)?;
    let mut raw = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (name, deps) = line.split_once(':').unwrap_or((line, ""));
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(PlanError::Parse {
                what: "the package list".into(),
                message: format!("line {}: expected `name: dep dep …`", no + 1),
            });
        }
        let deps: Vec<String> = deps.split_whitespace().map(str::to_string).collect();
        raw.push((name.to_string(), deps, SourceFacts::default()));
    }
    finish(raw, Vec::new())
}

/// Parses a Debian `Sources` index (one or several concatenated). Build dependencies name
/// binary packages; each is mapped to the source package whose `Binary` lists it (alternatives
/// `a | b`: the first known one; version, architecture and profile qualifiers ignored).
pub fn parse_debian_sources(text: &str) -> Result<PackageList, PlanError> {
    too_big(text)?;
    struct Stanza {
        name: String,
        binaries: Vec<String>,
        build_deps: Vec<Vec<String>>,
        facts: SourceFacts,
    }
    let mut stanzas: Vec<Stanza> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for block in text.split("\n\n") {
        let mut fields: HashMap<String, String> = HashMap::new();
        let mut current: Option<String> = None;
        for line in block.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(f) = &current
                    && let Some(v) = fields.get_mut(f)
                {
                    v.push('\n');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                current = Some(k.to_string());
                fields.insert(k.to_string(), v.trim().to_string());
            }
        }
        let Some(name) = fields.get("Package").map(|s| s.trim().to_string()) else { continue };
        let list = |k: &str| -> Vec<String> {
            fields
                .get(k)
                .map(|v| {
                    v.split([',', '\n'])
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut build_deps: Vec<Vec<String>> = Vec::new();
        for k in ["Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep"] {
            for clause in list(k) {
                let alts: Vec<String> = clause
                    .split('|')
                    .filter_map(|a| a.split_whitespace().next())
                    .map(|a| a.split(':').next().unwrap_or(a).to_string())
                    .filter(|a| !a.is_empty())
                    .collect();
                if !alts.is_empty() {
                    build_deps.push(alts);
                }
            }
        }
        let tar_bytes = fields
            .get("Files")
            .map(|files| {
                files
                    .lines()
                    .filter_map(|l| {
                        let mut it = l.split_whitespace();
                        let (_, size, file) = (it.next()?, it.next()?, it.next()?);
                        (file.contains(".tar.")).then(|| size.parse::<u64>().ok()).flatten()
                    })
                    .fold(0u64, u64::saturating_add)
            })
            .unwrap_or(0);
        let all_deps: Vec<&str> = build_deps.iter().flatten().map(String::as_str).collect();
        let facts = SourceFacts {
            tar_bytes: (tar_bytes > 0).then_some(tar_bytes),
            language: Language::from_debian_build_deps(&all_deps),
            build_system: super::estimate::BuildSystem::from_debian_build_deps(&all_deps),
        };
        let binaries = list("Binary");
        // A later stanza of the same source (an update) replaces the earlier one.
        let stanza = Stanza { name: name.clone(), binaries, build_deps, facts };
        match position.get(&name) {
            Some(&i) => stanzas[i] = stanza,
            None => {
                position.insert(name, stanzas.len());
                stanzas.push(stanza);
            }
        }
        if stanzas.len() > MAX_PACKAGES {
            return Err(PlanError::Invalid(format!("more than {MAX_PACKAGES} source packages")));
        }
    }
    let mut source_of: HashMap<&str, &str> = HashMap::new();
    for s in &stanzas {
        for b in &s.binaries {
            source_of.entry(b.as_str()).or_insert(s.name.as_str());
        }
    }
    let mut notes = Vec::new();
    let mut unresolved = 0usize;
    let raw = stanzas
        .iter()
        .map(|s| {
            let mut deps: Vec<String> = Vec::new();
            for alts in &s.build_deps {
                match alts.iter().find_map(|a| source_of.get(a.as_str())) {
                    Some(src) if *src != s.name && !deps.iter().any(|d| d == src) => {
                        deps.push((*src).to_string())
                    }
                    Some(_) => {}
                    None => unresolved += 1,
                }
            }
            (s.name.clone(), deps, s.facts.clone())
        })
        .collect();
    if unresolved > 0 {
        notes.push(format!(
            "{unresolved} build dependencies name binaries no listed source builds (outside the \
             list): ignored"
        ));
    }
    if stanzas.iter().any(|s| s.facts.tar_bytes.is_none()) {
        notes.push("some sources list no tarball: their size is assumed".into());
    }
    finish(raw, notes)
}

fn finish(
    raw: Vec<(String, Vec<String>, SourceFacts)>,
    mut notes: Vec<String>,
) -> Result<PackageList, PlanError> {
    if raw.is_empty() {
        return Err(PlanError::Invalid("the package list names no packages".into()));
    }
    if raw.len() > MAX_PACKAGES {
        return Err(PlanError::Invalid(format!("more than {MAX_PACKAGES} packages")));
    }
    let names: HashSet<&str> = raw.iter().map(|(n, _, _)| n.as_str()).collect();
    if names.len() < raw.len() {
        return Err(PlanError::Invalid("a package is listed twice".into()));
    }
    let mut dropped = 0usize;
    let mut packages = Vec::with_capacity(raw.len());
    for (name, deps, facts) in &raw {
        if deps.len() > MAX_DEPS {
            return Err(PlanError::Invalid(format!("{name}: more than {MAX_DEPS} dependencies")));
        }
        let kept: Vec<String> =
            deps.iter().filter(|d| names.contains(d.as_str()) && *d != name).cloned().collect();
        dropped += deps.len() - kept.len();
        packages.push((name.clone(), kept, facts.clone()));
    }
    if dropped > 0 {
        notes.push(format!("{dropped} dependencies name packages outside the list: ignored"));
    }
    Ok(PackageList { packages, notes })
}

/// Depth-first search over the dependencies, iterative (no recursion on hostile input):
/// calls `back(from, to)` for every edge closing a cycle (to a package still on the stack)
/// until it returns true (stop).
fn back_edges(w: &Workload, mut back: impl FnMut(&[(usize, usize)], usize, usize) -> bool) {
    let index: HashMap<&str, usize> =
        w.packages.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> = w
        .packages
        .iter()
        .map(|p| p.deps.iter().filter_map(|d| index.get(d.as_str()).copied()).collect())
        .collect();
    // 0 unvisited, 1 on the stack, 2 done.
    let mut mark = vec![0u8; deps.len()];
    for root in 0..deps.len() {
        if mark[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = 1;
        while let Some(&(node, next)) = stack.last() {
            if let Some(&d) = deps[node].get(next) {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                match mark[d] {
                    0 => {
                        mark[d] = 1;
                        stack.push((d, 0));
                    }
                    1 if back(&stack, node, d) => return,
                    _ => {}
                }
            } else {
                mark[node] = 2;
                stack.pop();
            }
        }
    }
}

/// A dependency cycle, as names (the first repeated at the end), or `None`.
pub fn find_cycle(w: &Workload) -> Option<Vec<String>> {
    let mut found = None;
    back_edges(w, |stack, _, to| {
        let from = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
        let mut cycle: Vec<String> =
            stack[from..].iter().map(|(n, _)| w.packages[*n].name.clone()).collect();
        cycle.push(w.packages[to].name.clone());
        found = Some(cycle);
        true
    });
    found
}

/// Drops every dependency that closes a cycle in one depth-first pass (what is left has no
/// cycle); returns the dropped edges (`a -> b`).
pub fn break_cycles(w: &mut Workload) -> Vec<String> {
    let mut edges: Vec<(usize, usize)> = Vec::new();
    back_edges(w, |_, from, to| {
        edges.push((from, to));
        false
    });
    let mut dropped = Vec::with_capacity(edges.len());
    for (from, to) in edges {
        let to_name = w.packages[to].name.clone();
        w.packages[from].deps.retain(|d| *d != to_name);
        dropped.push(format!("{} -> {to_name}", w.packages[from].name));
    }
    dropped
}

/// Keeps the named packages and everything they (transitively) depend on; unknown names are
/// an error.
pub fn select(w: &Workload, names: &[String]) -> Result<Workload, PlanError> {
    let index: HashMap<&str, usize> =
        w.packages.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
    let mut keep = vec![false; w.packages.len()];
    let mut todo: Vec<usize> = Vec::new();
    for n in names {
        let i = index
            .get(n.as_str())
            .copied()
            .ok_or_else(|| PlanError::Invalid(format!("--select {n}: not in the package list")))?;
        todo.push(i);
    }
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut keep[i], true) {
            continue;
        }
        todo.extend(w.packages[i].deps.iter().filter_map(|d| index.get(d.as_str()).copied()));
    }
    let packages: Vec<Package> =
        w.packages.iter().zip(&keep).filter(|(_, k)| **k).map(|(p, _)| p.clone()).collect();
    Ok(Workload { name: w.name.clone(), packages })
}

impl PackageList {
    /// The workload: every package's costs from `history` when it has a record (its wall time,
    /// the compile part run `jobs` wide), estimated from its sources otherwise.
    pub fn into_workload(
        self,
        name: &str,
        history: &[super::estimate::HistoryRecord],
        jobs: u32,
    ) -> (Workload, Vec<String>) {
        let latest = super::estimate::latest_records(history);
        let packages = self
            .packages
            .into_iter()
            .map(|(n, deps, facts)| {
                let mut p = super::estimate::estimate(&n, deps, &facts);
                super::estimate::apply_history(&mut p, &latest, jobs);
                p
            })
            .collect();
        (Workload { name: name.to_string(), packages }, self.notes)
    }
}

/// Reads a package list of any supported kind: a workload JSON (`{…}`, costs given; history
/// records still apply), a Debian `Sources` index (`Package:` stanzas), or a repoquery-style
/// text.
pub fn parse_any(
    text: &str,
    name: &str,
    history: &[super::estimate::HistoryRecord],
    jobs: u32,
) -> Result<(Workload, Vec<String>), PlanError> {
    too_big(text)?;
    let start = text.trim_start();
    if start.starts_with('{') {
        let mut w: Workload = serde_json::from_str(text)
            .map_err(|e| PlanError::Parse { what: name.into(), message: e.to_string() })?;
        if w.name.is_empty() {
            w.name = name.to_string();
        }
        let latest = super::estimate::latest_records(history);
        let mut applied = 0;
        for p in &mut w.packages {
            applied += usize::from(super::estimate::apply_history(p, &latest, jobs));
        }
        let notes = if applied > 0 {
            vec![format!("{applied} packages' given costs replaced by their history")]
        } else {
            Vec::new()
        };
        return Ok((w, notes));
    }
    let list = if start.starts_with("Package:") {
        parse_debian_sources(text)?
    } else {
        parse_repoquery(text)?
    };
    Ok(list.into_workload(name, history, jobs))
}
