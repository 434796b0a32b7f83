//! Checking a remote object against a local compile of the same unit, when the agent asks
//! ([`discomy_protocol::CompileResult::verify`]), and the agent's list of quarantined nodes.
//!
//! Objects are byte-identical by design. The one exception is gcc's LTO: without
//! `-frandom-seed`, the names of the `.gnu.lto_*` sections end in a random number. Two such
//! objects are the same when every section has the same name (that suffix aside), attributes
//! and contents; only the section-name table itself may differ.

use std::path::PathBuf;

/// How a remote object compares with the local one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same object.
    Same,
    /// A different object: the node is not to be trusted.
    Different,
    /// No verdict possible (text output of an LTO compile without a seed, which names the
    /// random sections in its text).
    Inconclusive,
}

/// Compares the local and the remote output of one unit compiled with `args`.
pub fn compare(local: &[u8], remote: &[u8], args: &[String]) -> Verdict {
    if local == remote || elf_equivalent(local, remote) {
        return Verdict::Same;
    }
    let lto = args.iter().any(|a| a == "-flto" || a.starts_with("-flto="));
    let seeded = args.iter().any(|a| a.starts_with("-frandom-seed="));
    if lto && !seeded && !local.starts_with(ELF_MAGIC) {
        return Verdict::Inconclusive;
    }
    Verdict::Different
}

/// Where the agent on `socket` lists quarantined nodes (one per line).
pub fn list_path(socket: &std::path::Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".quarantined");
    PathBuf::from(name)
}

/// Whether the agent of this call has quarantined `node` (verification found it returning a
/// wrong object): cache entries it produced are not served. Only entries from remote compiles
/// ask, so local builds never read the list.
pub fn quarantined(node: &str) -> bool {
    let path = list_path(&crate::client::socket_path());
    match discomy_protocol::plumbing::read_untrusted(&path, MAX_LIST) {
        Ok(list) => list.split(|&b| b == b'\n').any(|line| line == node.as_bytes()),
        Err(_) => false,
    }
}

/// Largest quarantine list read.
const MAX_LIST: u64 = 1 << 20;

const ELF_MAGIC: &[u8] = b"\x7fELF\x02\x01";

/// One section of a 64-bit little-endian ELF file.
struct Section<'a> {
    name: &'a [u8],
    /// Type, flags, address, size, link, info, alignment, entry size.
    attributes: [u64; 8],
    contents: &'a [u8],
}

/// Whether two ELF relocatable objects are the same apart from the random suffixes of LTO
/// section names (see the module header). Anything that does not parse is not equivalent.
fn elf_equivalent(a: &[u8], b: &[u8]) -> bool {
    let (Some((ha, sa)), Some((hb, sb))) = (sections(a), sections(b)) else { return false };
    ha == hb
        && sa.len() == sb.len()
        && sa.iter().zip(&sb).all(|(x, y)| {
            lto_name(x.name) == lto_name(y.name)
                && x.attributes == y.attributes
                && x.contents == y.contents
        })
}

/// `.gnu.lto_<what>.<hex>` without `.<hex>`; other names as they are.
fn lto_name(name: &[u8]) -> &[u8] {
    if !name.starts_with(b".gnu.lto_") {
        return name;
    }
    match name.iter().rposition(|&c| c == b'.') {
        Some(dot) if dot > 9 && name[dot + 1..].iter().all(u8::is_ascii_hexdigit) => &name[..dot],
        _ => name,
    }
}

fn u16_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?)))
}

fn u32_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?)))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

fn slice(d: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    d.get(start..end)
}

/// The ELF header with the section table's offset blanked (it moves when the name table's
/// length changes), and the sections with the name table's contents left out. `None` unless
/// `d` is a well-formed relocatable 64-bit little-endian ELF file.
fn sections(d: &[u8]) -> Option<(Vec<u8>, Vec<Section<'_>>)> {
    const ET_REL: u64 = 1;
    const SHT_NOBITS: u64 = 8;
    if !d.starts_with(ELF_MAGIC) || u16_at(d, 16)? != ET_REL || u16_at(d, 0x36)? != 0 {
        return None;
    }
    let shoff = u64_at(d, 0x28)?;
    let entsize = u16_at(d, 0x3a)?;
    let count = u16_at(d, 0x3c)?;
    let names_index = u16_at(d, 0x3e)?;
    if entsize != 64 || names_index >= count {
        return None;
    }
    let header = |i: u64| slice(d, shoff.checked_add(i * 64)?, 64);
    let names_header = header(names_index)?;
    let names = slice(d, u64_at(names_header, 24)?, u64_at(names_header, 32)?)?;
    let mut out = Vec::with_capacity(usize::try_from(count).ok()?);
    for i in 0..count {
        let h = header(i)?;
        let name_at = usize::try_from(u32_at(h, 0)?).ok()?;
        let name = names.get(name_at..)?;
        let name = &name[..name.iter().position(|&c| c == 0)?];
        let kind = u32_at(h, 4)?;
        let size = u64_at(h, 32)?;
        let contents = if kind == SHT_NOBITS || i == names_index {
            &[][..]
        } else {
            slice(d, u64_at(h, 24)?, size)?
        };
        let attributes = [
            kind,
            u64_at(h, 8)?,
            u64_at(h, 16)?,
            if i == names_index { 0 } else { size },
            u32_at(h, 40)?,
            u32_at(h, 44)?,
            u64_at(h, 48)?,
            u64_at(h, 56)?,
        ];
        out.push(Section { name, attributes, contents });
    }
    let mut head = d.get(..64)?.to_vec();
    head[0x28..0x30].fill(0);
    Some((head, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn lto_suffixes_only() {
        assert_eq!(lto_name(b".gnu.lto_.inline.5f3a9c1d2e"), b".gnu.lto_.inline");
        assert_eq!(lto_name(b".gnu.lto_foo.decls"), b".gnu.lto_foo.decls");
        assert_eq!(lto_name(b".text.hot"), b".text.hot");
        assert_eq!(lto_name(b".gnu.lto_.x"), b".gnu.lto_.x");
    }

    #[test]
    fn bytes_decide_outside_elf() {
        assert_eq!(compare(b"abc", b"abc", &v("-O2")), Verdict::Same);
        assert_eq!(compare(b"abc", b"abd", &v("-O2")), Verdict::Different);
        assert_eq!(compare(b"abc", b"abd", &v("-O2 -flto=auto")), Verdict::Inconclusive);
        assert_eq!(
            compare(b"abc", b"abd", &v("-flto -frandom-seed=a.o")),
            Verdict::Different,
            "a seeded LTO unit is byte-identical"
        );
        assert!(!elf_equivalent(ELF_MAGIC, ELF_MAGIC), "a truncated file is not an object");
    }
}
