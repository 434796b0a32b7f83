//! The unit tree (a tmpfs of the client's files at their absolute paths, overlaid on the
//! toolchain) and the new root (read-only binds of the tree, the work directory, a few devices).

use super::*;

/// Mounts a read-only overlayfs of `unit` over `tree` on a fresh mount point, which is
/// unmounted and removed when the returned guard is dropped.
/// Most bytes of a unit tree list.
pub(super) const MAX_TREE_LIST: u64 = 64 << 20;

/// The unit tree of `--overlay-files`, in a fresh tmpfs sized for it: directories as listed,
/// files copied from their sources. Paths must be absolute and normalised.
pub(super) fn build_unit_tree(list: &Path, scratch: &Path) -> Result<PathBuf> {
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
    let mut bytes: u64 = 0;
    for pair in fields.chunks(2) {
        let path = std::str::from_utf8(pair[0]).context("unit tree list: a path is not UTF-8")?;
        if let Err(why) = discomy_protocol::sources::check_path(path) {
            bail!("unit tree list: {path:?} is not an absolute normalised path ({why})");
        }
        let source =
            (!pair[1].is_empty()).then(|| PathBuf::from(OsString::from_vec(pair[1].to_vec())));
        if let Some(src) = &source {
            bytes += fs::metadata(src).with_context(|| format!("{}", src.display()))?.len();
        }
        entries.push((path, source));
    }
    let root = mount_point(scratch, "unit")?;
    // Data plus room for the directories and rounding to pages.
    let size = bytes + (entries.len() as u64 + 64) * 8192;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode=0755,size={size}").as_str()),
    )
    .context("mount the unit tree's tmpfs")?;
    let mut made: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    // Directories 0755 and files 0644 whatever umask the worker has.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let built = fill_unit_tree(&root, entries, &mut made);
    nix::sys::stat::umask(umask);
    built?;
    Ok(root)
}

pub(super) fn fill_unit_tree(
    root: &Path,
    entries: Vec<(&str, Option<PathBuf>)>,
    made: &mut std::collections::HashSet<PathBuf>,
) -> Result<()> {
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
                copy_small(&src, &dst)
                    .with_context(|| format!("copy {} to {path}", src.display()))?;
            }
        }
    }
    Ok(())
}

/// Copies one unit file into the unit tree, readable by all (the compiler runs as a slot uid):
/// one read and one write, where `fs::copy` first tries `copy_file_range` (which always fails
/// across file systems, as here) and then sets permissions. A unit's files are headers and
/// sources, so they are read whole. The caller has set the umask to 022.
pub(super) fn copy_small(src: &Path, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = fs::read(src)?;
    let mut out =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(dst)?;
    io::Write::write_all(&mut out, &bytes)
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

/// Builds the sandbox's root in a fresh tmpfs on `newroot`, then makes that tmpfs read-only.
pub(super) fn build_root(tree: &Path, work: &Path, newroot: &Path) -> Result<()> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), newroot, Some("tmpfs"), nosuid_nodev, Some("mode=0755,size=1m"))
        .with_context(|| format!("mount tmpfs on {}", newroot.display()))?;

    let names: Vec<OsString> = if tree == Path::new("/") {
        HOST_ENTRIES.iter().map(OsString::from).collect()
    } else {
        let mut names: Vec<OsString> = fs::read_dir(tree)
            .with_context(|| format!("read {}", tree.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        names
    };
    let work_at = work_mount_point(&[tree]);
    for name in names {
        if RESERVED.iter().any(|r| name == *r) || (work_at == "/tmp" && name == "tmp") {
            continue;
        }
        let src = tree.join(&name);
        let dst = newroot.join(&name);
        let Ok(meta) = fs::symlink_metadata(&src) else { continue };
        let kind = meta.file_type();
        if kind.is_symlink() {
            // Recreated, not followed: inside the sandbox it resolves against the new root.
            let target =
                fs::read_link(&src).with_context(|| format!("read link {}", src.display()))?;
            symlink(&target, &dst).with_context(|| format!("create link {}", dst.display()))?;
        } else if kind.is_dir() {
            fs::create_dir(&dst).with_context(|| format!("create {}", dst.display()))?;
            bind(&src, &dst, MsFlags::MS_RDONLY)?;
        } else if kind.is_file() {
            File::create(&dst).with_context(|| format!("create {}", dst.display()))?;
            bind(&src, &dst, MsFlags::MS_RDONLY)?;
        }
    }

    let tmp = newroot.join(work_at.trim_start_matches('/'));
    fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    bind(work, &tmp, MsFlags::MS_NOEXEC)?;

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

    mount(
        None::<&str>,
        newroot,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev,
        None::<&str>,
    )
    .with_context(|| format!("remount {} read-only", newroot.display()))?;
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
