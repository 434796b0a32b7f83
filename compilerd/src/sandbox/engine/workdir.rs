//! The program's writable unit directory, bounded in size: a tmpfs of `--work-bytes` mounted
//! where the work directory would have been bound. The worker's files are copied in before the
//! run; what the program left is copied back after it, so the worker reads its outputs where it
//! always did. A program that fills the tmpfs gets `ENOSPC` there, and the run is reported as
//! over its limit (`work_full` in the status file), never as a compile of its own.
//!
//! What was copied in and left untouched is not copied back: the worker still has it (a
//! native unit's `unit.i`, a source unit's tree list), so a unit pays one copy of its output.
//!
//! A bind of the real directory had no bound at all besides the per-file `RLIMIT_FSIZE`: a
//! hostile toolchain could write files of just under that limit until the worker's disk filled.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::stat::Mode;
use nix::sys::statvfs::statvfs;

use super::error::{Context, Result};

/// Entries copied back at most: a program may leave many files, but not unboundedly many.
const MAX_ENTRIES: usize = 100_000;

/// The regular files copied in, by their path in the tmpfs, with their copy's (size, mtime):
/// unchanged after the run, they are not copied back.
pub(super) type CopiedIn = HashMap<PathBuf, (u64, i64, i64)>;

/// Mounts a tmpfs of `bytes` on `at` (owned like `work`, `nosuid`, `nodev`, `noexec`) and
/// copies `work`'s contents into it.
pub(super) fn mount_bounded(work: &Path, at: &Path, bytes: u64) -> Result<CopiedIn> {
    let meta = fs::metadata(work).with_context(|| format!("stat {}", work.display()))?;
    let options = format!(
        "size={bytes},nr_inodes={},mode=0700,uid={},gid={}",
        MAX_ENTRIES + 1,
        meta.uid(),
        meta.gid()
    );
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), at, Some("tmpfs"), flags, Some(options.as_str()))
        .with_context(|| format!("mount a {bytes}-byte tmpfs on {}", at.display()))?;
    let mut copied = CopiedIn::new();
    copy_tree(work, at, &mut 0, Some(&mut copied), None)
        .with_context(|| format!("copy {} in", work.display()))?;
    Ok(copied)
}

/// After the run: whether the program filled the tmpfs at `at`, and its contents copied back
/// into `work` (regular files, directories, symbolic links and FIFOs, as they are: the worker
/// checks what it reads).
pub(super) fn copy_back(at: &Path, work: &Path, copied_in: &CopiedIn) -> Result<bool> {
    let full = statvfs(at)
        .map(|s| s.blocks_available() == 0 || s.files_available() == 0)
        .with_context(|| format!("statvfs {}", at.display()))?;
    if !full {
        copy_tree(at, work, &mut 0, None, Some(copied_in))
            .with_context(|| format!("copy {} back", at.display()))?;
    }
    Ok(full)
}

/// Copies the entries of `from` into `to` (which exists), replacing what is there; records the
/// regular files written in `record`, and skips those `unchanged` lists with the same (size,
/// mtime).
fn copy_tree(
    from: &Path,
    to: &Path,
    count: &mut usize,
    mut record: Option<&mut CopiedIn>,
    unchanged: Option<&CopiedIn>,
) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        *count += 1;
        if *count > MAX_ENTRIES {
            return Err(io::Error::other(format!("more than {MAX_ENTRIES} entries")));
        }
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            match fs::symlink_metadata(&dst) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(&dst)?;
                    fs::create_dir(&dst)?;
                }
                Err(_) => fs::create_dir(&dst)?,
            }
            copy_tree(&src, &dst, count, record.as_deref_mut(), unchanged)?;
            continue;
        }
        if kind.is_file() {
            let mut input =
                OpenOptions::new().read(true).custom_flags(libc_nofollow()).open(&src)?;
            let meta = input.metadata()?;
            if unchanged.and_then(|u| u.get(&src)) == Some(&stamp(&meta)) {
                continue;
            }
            remove_entry(&dst)?;
            let mode = meta.mode() & 0o777;
            let mut output = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc_nofollow())
                .open(&dst)?;
            io::copy(&mut input, &mut output)?;
            if let Some(record) = record.as_deref_mut() {
                record.insert(dst.clone(), stamp(&output.metadata()?));
            }
            continue;
        }
        remove_entry(&dst)?;
        if kind.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else if kind.is_fifo() {
            nix::unistd::mkfifo(&dst, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
        }
        // Sockets and devices cannot be made on these mounts: left out.
    }
    Ok(())
}

fn remove_entry(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn stamp(meta: &fs::Metadata) -> (u64, i64, i64) {
    (meta.len(), meta.mtime(), meta.mtime_nsec())
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}
