//! The new root: a tmpfs with a few devices, the unit tree (the client's files at their absolute
//! paths, copied in), the toolchain tree merged around it with read-only binds, and the work
//! directory; then made read-only. A prebuilt unit tree (`--overlay`) is laid over the toolchain
//! with overlayfs instead.

use super::*;

/// Most bytes of a unit tree list.
pub(super) const MAX_TREE_LIST: u64 = 64 << 20;
/// Room in the new root's tmpfs besides the unit tree (mount points, links).
pub(super) const ROOT_BYTES: u64 = 1 << 20;

/// The unit tree of `--overlay-files`, copied into the new root (a [`root_skeleton`], grown to
/// hold at most `max_bytes` of it): directories as listed, files copied from their sources. Paths
/// must be absolute and normalised; those under what the sandbox provides itself (`/dev`,
/// `/proc`, …) are left out, as the toolchain tree's are.
pub(super) fn copy_unit_tree(list: &Path, newroot: &Path, max_bytes: u64) -> Result<()> {
    let mut text = Vec::new();
    io::Read::read_to_end(
        &mut io::Read::take(File::open(list).context("open the unit tree list")?, MAX_TREE_LIST),
        &mut text,
    )
    .context("read the unit tree list")?;
    let fields: Vec<&[u8]> = nul_split(&text).collect();
    if fields.len() % 2 != 0 {
        bail!("unit tree list: an odd number of fields");
    }
    let mut entries = Vec::with_capacity(fields.len() / 2);
    for pair in fields.chunks(2) {
        let path = std::str::from_utf8(pair[0]).context("unit tree list: a path is not UTF-8")?;
        if let Err(why) = discomy_protocol::sources::check_path(path) {
            bail!("unit tree list: {path:?} is not an absolute normalised path ({why})");
        }
        let top = path[1..].split('/').next().unwrap_or("");
        if RESERVED.contains(&top) || top.is_empty() {
            continue;
        }
        let source =
            (!pair[1].is_empty()).then(|| PathBuf::from(OsString::from_vec(pair[1].to_vec())));
        entries.push((path, source));
    }
    // The files are counted against `max_bytes` as they are copied; the tmpfs only allocates
    // what is written, so it is sized for the bound plus directories and page rounding.
    let size =
        ROOT_BYTES.saturating_add(max_bytes).saturating_add((entries.len() as u64 + 64) * 8192);
    mount(
        None::<&str>,
        newroot,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={size}").as_str()),
    )
    .context("grow the new root for the unit tree")?;
    // Directories 0755 and files 0644 whatever umask the worker has.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let built = fill_unit_tree(newroot, entries, max_bytes);
    nix::sys::stat::umask(umask);
    built
}

fn fill_unit_tree(
    root: &Path,
    entries: Vec<(&str, Option<PathBuf>)>,
    max_bytes: u64,
) -> Result<()> {
    let mut made: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    let mut left = max_bytes;
    // One buffer for every file: each is read with one `read` (plus the one that finds its end).
    let mut buffer = Vec::new();
    for (path, source) in entries {
        let dst = root.join(&path[1..]);
        match source {
            None => fs::create_dir_all(&dst).with_context(|| format!("create {path}"))?,
            Some(src) => {
                if let Some(parent) = dst.parent().filter(|p| !made.contains(*p)) {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("create the directory of {path}"))?;
                    made.insert(parent.to_path_buf());
                }
                buffer.clear();
                let file = File::open(&src).with_context(|| format!("open {}", src.display()))?;
                io::Read::read_to_end(
                    &mut io::Read::take(file, left.saturating_add(1)),
                    &mut buffer,
                )
                .with_context(|| format!("read {}", src.display()))?;
                left = left.checked_sub(buffer.len() as u64).ok_or_else(|| {
                    setup_error!("unit tree list: more than {max_bytes} bytes of files")
                })?;
                write_new(&dst, &buffer)
                    .with_context(|| format!("copy {} to {path}", src.display()))?;
            }
        }
    }
    Ok(())
}

/// Writes one unit file into the unit tree, readable by all (the compiler runs as a slot uid).
/// The caller has set the umask to 022.
fn write_new(dst: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(dst)?;
    io::Write::write_all(&mut out, bytes)
}

pub(super) fn merge_trees(unit: &Path, tree: &Path, scratch: &Path) -> Result<PathBuf> {
    for dir in [unit, tree] {
        let text = dir.to_str().ok_or_else(|| setup_error!("{} is not UTF-8", dir.display()))?;
        if text.contains([':', ',', '\\']) || dir == Path::new("/") {
            bail!("{} cannot be an overlay layer", dir.display());
        }
    }
    let merged = mount_point(scratch, "merged")?;
    let options = format!("lowerdir={}:{}", unit.display(), tree.display());
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .with_context(|| format!("mount overlay {options}"))?;
    Ok(merged)
}

/// The part of the sandbox's root that does not depend on the run, in a fresh tmpfs on
/// `newroot`: `/dev` (a few devices and links) and `/proc` (mounted by stage 2). A warm helper
/// makes it before its run arrives.
pub(super) fn root_skeleton(newroot: &Path) -> Result<()> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let options = format!("mode=0755,size={ROOT_BYTES}");
    mount(Some("tmpfs"), newroot, Some("tmpfs"), nosuid_nodev, Some(options.as_str()))
        .with_context(|| format!("mount tmpfs on {}", newroot.display()))?;
    let dev = newroot.join("dev");
    fs::create_dir(&dev).with_context(|| format!("create {}", dev.display()))?;
    for name in DEVICES {
        let src = Path::new("/dev").join(name);
        let dst = dev.join(name);
        File::create(&dst).with_context(|| format!("create {}", dst.display()))?;
        mount(Some(&src), &dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind {} on {}", src.display(), dst.display()))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).with_context(|| format!("create /dev/{name}"))?;
    }
    let proc_dir = newroot.join("proc");
    fs::create_dir(&proc_dir).with_context(|| format!("create {}", proc_dir.display()))?;
    Ok(())
}

/// Completes the sandbox's root on `newroot` (a [`root_skeleton`], holding the unit tree when
/// `unit_in_root`) with the tree merged in and the work directory (a copy in a tmpfs of
/// `work_bytes`: see `workdir`), then makes that tmpfs read-only. Returns where the work
/// directory's tmpfs is mounted, and what was copied into it.
pub(super) fn build_root(
    tree: &Path,
    work: &Path,
    newroot: &Path,
    unit_in_root: bool,
    work_bytes: u64,
) -> Result<(PathBuf, super::workdir::CopiedIn)> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let names: Vec<OsString> = if tree == Path::new("/") {
        HOST_ENTRIES.iter().map(OsString::from).collect()
    } else {
        sorted_names(tree)?
    };
    // The unit's own /tmp (its files were there on the client) puts the work directory elsewhere.
    let unit_tmp = unit_in_root && fs::symlink_metadata(newroot.join("tmp")).is_ok();
    let work_at = if unit_tmp { WORK_ELSEWHERE } else { work_mount_point(&[tree]) };
    for name in names {
        if RESERVED.iter().any(|r| name == *r) || (work_at == "/tmp" && name == "tmp") {
            continue;
        }
        merge_entry(&tree.join(&name), &newroot.join(&name))?;
    }

    let tmp = newroot.join(work_at.trim_start_matches('/'));
    fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let copied_in = super::workdir::mount_bounded(work, &tmp, work_bytes)?;

    mount(
        None::<&str>,
        newroot,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev,
        None::<&str>,
    )
    .with_context(|| format!("remount {} read-only", newroot.display()))?;
    Ok((tmp, copied_in))
}

/// The sorted names in `dir`.
fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    Ok(names)
}

/// Puts the tree's entry `src` at `dst` in the new root, read-only, as an overlay with the unit
/// tree as the upper layer would show it: where the unit tree has nothing, the entry itself
/// (bound, or a symbolic link recreated: inside the sandbox it resolves against the new root);
/// where both have a directory, their entries merged; otherwise the unit tree's entry wins.
fn merge_entry(src: &Path, dst: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(src) else { return Ok(()) };
    let kind = meta.file_type();
    match fs::symlink_metadata(dst) {
        Ok(there) if there.is_dir() && kind.is_dir() => {
            for name in sorted_names(src)? {
                merge_entry(&src.join(&name), &dst.join(&name))?;
            }
            return Ok(());
        }
        Ok(_) => return Ok(()),
        Err(_) => {}
    }
    if kind.is_symlink() {
        let target = fs::read_link(src).with_context(|| format!("read link {}", src.display()))?;
        symlink(&target, dst).with_context(|| format!("create link {}", dst.display()))?;
    } else if kind.is_dir() {
        fs::create_dir(dst).with_context(|| format!("create {}", dst.display()))?;
        bind(src, dst, MsFlags::MS_RDONLY)?;
    } else if kind.is_file() {
        File::create(dst).with_context(|| format!("create {}", dst.display()))?;
        bind(src, dst, MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

/// Binds `src` on `dst` (not recursively when allowed), then remounts it `nosuid`, `nodev`
/// and `extra`, keeping the flags the source mount had locked (`noexec`, `ro`).
pub(super) fn bind(src: &Path, dst: &Path, extra: MsFlags) -> Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .or_else(|e| {
            // In a user namespace, a non-recursive bind that would uncover what locked mounts
            // hide is refused; take the submounts along then.
            if e == Errno::EINVAL {
                mount(
                    Some(src),
                    dst,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
            } else {
                Err(e)
            }
        })
        .with_context(|| format!("bind {} on {}", src.display(), dst.display()))?;
    let locked = statvfs(src).map(|s| s.flags()).unwrap_or(FsFlags::empty());
    let mut flags =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra;
    if locked.contains(FsFlags::ST_NOEXEC) {
        flags |= MsFlags::MS_NOEXEC;
    }
    if locked.contains(FsFlags::ST_RDONLY) {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("remount {} ({flags:?})", dst.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cgroups
// ---------------------------------------------------------------------------------------------
