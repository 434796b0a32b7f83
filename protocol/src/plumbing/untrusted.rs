//! Reading a file that a less trusted process wrote (a sandboxed compiler's output) from outside
//! its sandbox: never through a symbolic link (followed on the host, it would reach files the
//! program could not read itself), never blocking on a FIFO or a device, and never more than a
//! bound, so the program cannot make its "output" a host file, hang the reader or fill its
//! memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads `path`, which must be a regular file (not a link to one) of at most `max` bytes.
pub fn read_untrusted(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let refuse = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => refuse("a symbolic link, not a file".into()),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(refuse(format!("{} bytes, more than {max}", meta.len())));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(refuse(format!("more than {max} bytes")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unit.o");
        std::fs::write(&file, b"object").unwrap();
        assert_eq!(read_untrusted(&file, 6).unwrap(), b"object");
        assert!(read_untrusted(&file, 5).is_err(), "over the bound");
        let link = dir.path().join("link.o");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_untrusted(&link, 1 << 20).is_err(), "a link to a readable file");
        let null = dir.path().join("null.o");
        std::os::unix::fs::symlink("/dev/null", &null).unwrap();
        assert!(read_untrusted(&null, 1 << 20).is_err(), "a link to a device");
        assert!(read_untrusted(Path::new("/dev/zero"), 1 << 20).is_err(), "a device");
        let fifo = dir.path().join("fifo.o");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(read_untrusted(&fifo, 1 << 20).is_err(), "a FIFO, without blocking");
        assert!(read_untrusted(dir.path(), 1 << 20).is_err(), "a directory");
    }
}
