//! Moving a `-g` object to another build directory: an ELF64 little-endian x86-64 relocatable
//! rewriter that replaces the working directory in `.debug_line_str` (`DW_AT_comp_dir` and
//! directory 0 of the line table), lays out the string section and every later section exactly
//! as GNU as does (each at the next offset aligned to its `sh_addralign`, zero padding, section
//! header table aligned to 8 at the end), and moves the `R_X86_64_32` addends that point into
//! `.debug_line_str`.
//!
//! Conservative by design: the rewrite is refused (`None`) unless the object has exactly the
//! expected shape: the old directory only as whole strings of `.debug_line_str`, references into
//! that section only through its section symbol with `R_X86_64_32` relocations, and a section
//! layout that the rule above reproduces byte for byte from the original sizes.

const EHDR: usize = 64;
const SHDR: usize = 64;
const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;
const SHT_REL: u32 = 9;
const SHF_MERGE_STRINGS: u64 = 0x10 | 0x20;
const R_X86_64_32: u64 = 10;
const STT_SECTION: u8 = 3;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[derive(Debug, Clone)]
struct Section {
    name: u32,
    ty: u32,
    flags: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    align: u64,
    entsize: u64,
}

impl Section {
    fn data<'a>(&self, obj: &'a [u8]) -> Option<&'a [u8]> {
        if self.ty == SHT_NOBITS {
            return Some(&[]);
        }
        let start = usize::try_from(self.offset).ok()?;
        obj.get(start..start.checked_add(usize::try_from(self.size).ok()?)?)
    }
    fn file_size(&self) -> u64 {
        if self.ty == SHT_NOBITS { 0 } else { self.size }
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    let a = a.max(1);
    v.checked_add(a - 1).map(|x| x / a * a)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// libiberty's `htab_hash_string`, which gcc's string tables hash with.
fn htab_hash_string(s: &[u8]) -> u32 {
    s.iter().fold(0u32, |r, &c| r.wrapping_mul(67).wrapping_add(u32::from(c)).wrapping_sub(113))
}

/// Whether gcc emits the compile unit's directory before its name in `.debug_line_str`: it
/// inserts the name, then the directory, into a fresh 13-slot open-addressing table (double
/// hashing, gcc's `hash_table`) and writes the strings in slot order.
fn dir_first(name: &[u8], dir: &[u8]) -> bool {
    const SIZE: u32 = 13;
    let name_slot = htab_hash_string(name) % SIZE;
    let h = htab_hash_string(dir);
    let mut slot = h % SIZE;
    let step = 1 + h % (SIZE - 2);
    while slot == name_slot {
        slot += step;
        if slot >= SIZE {
            slot -= SIZE;
        }
    }
    slot < name_slot
}

/// Offsets of every section in file order, and the section header table offset, as GNU as lays
/// them out for the given file sizes. `order` is the file order of the section indices.
fn layout(sections: &[Section], order: &[usize]) -> Option<(Vec<u64>, u64)> {
    let mut offsets = vec![0u64; sections.len()];
    let mut pos = EHDR as u64;
    for &i in order {
        let s = &sections[i];
        let at = align_up(pos, s.align)?;
        offsets[i] = at;
        pos = at.checked_add(s.file_size())?;
    }
    Some((offsets, align_up(pos, 8)?))
}

/// Rewrites `obj` (compiled in `old_dir`) into what the same compile in `new_dir` produces, or
/// `None` when the object does not have the exact shape this rewriter understands.
pub fn rewrite_dir(obj: &[u8], old_dir: &str, new_dir: &str) -> Option<Vec<u8>> {
    if old_dir == new_dir {
        return Some(obj.to_vec());
    }
    if old_dir.is_empty() || new_dir.is_empty() || new_dir.contains('\0') {
        return None;
    }
    // ELF64, little endian, version 1, ET_REL, x86-64, no program headers.
    if obj.len() < EHDR || obj[..4] != *b"\x7fELF" || obj[4..7] != [2, 1, 1] {
        return None;
    }
    if u16_at(obj, 16)? != 1 || u16_at(obj, 18)? != 62 || u16_at(obj, 56)? != 0 {
        return None;
    }
    let shoff = u64_at(obj, 40)?;
    if usize::from(u16_at(obj, 58)?) != SHDR {
        return None;
    }
    let shnum = usize::from(u16_at(obj, 60)?);
    let shstrndx = usize::from(u16_at(obj, 62)?);
    if shnum == 0 || shstrndx >= shnum {
        return None;
    }
    let table = usize::try_from(shoff).ok()?;
    if obj.len() != table.checked_add(shnum * SHDR)? {
        return None;
    }
    let mut sections = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let h = table + i * SHDR;
        sections.push(Section {
            name: u32_at(obj, h)?,
            ty: u32_at(obj, h + 4)?,
            flags: u64_at(obj, h + 8)?,
            offset: u64_at(obj, h + 24)?,
            size: u64_at(obj, h + 32)?,
            link: u32_at(obj, h + 40)?,
            info: u32_at(obj, h + 44)?,
            align: u64_at(obj, h + 48)?,
            entsize: u64_at(obj, h + 56)?,
        });
    }
    let shstr = sections[shstrndx].data(obj)?;
    let name_of = |s: &Section| -> Option<&[u8]> {
        let rest = shstr.get(usize::try_from(s.name).ok()?..)?;
        Some(&rest[..rest.iter().position(|&c| c == 0)?])
    };
    let mut line_str = None;
    for (i, s) in sections.iter().enumerate().skip(1) {
        if name_of(s)? == b".debug_line_str" {
            if line_str.is_some() {
                return None;
            }
            line_str = Some(i);
        }
        if s.ty == SHT_REL {
            return None;
        }
    }
    let ls = line_str?;
    let ls_sec = &sections[ls];
    if ls_sec.flags != SHF_MERGE_STRINGS || ls_sec.entsize != 1 || ls_sec.align > 1 {
        return None;
    }

    // The string section, string by string.
    let old_strings = ls_sec.data(obj)?;
    if old_strings.last() != Some(&0) {
        return None;
    }
    let old = old_dir.as_bytes();
    let pieces: Vec<&[u8]> = old_strings[..old_strings.len() - 1].split(|&c| c == 0).collect();
    // gcc's own strings come first (DW_AT_name and DW_AT_comp_dir of the compile unit, in its
    // hash table's order), then the assembler's line-table strings, starting with directory 0.
    let dirs: Vec<usize> = (0..pieces.len()).filter(|&i| pieces[i] == old).collect();
    if pieces.len() < 3 || dirs.len() != 2 || dirs[1] != 2 || dirs[0] > 1 {
        return None;
    }
    if pieces.iter().any(|p| *p != old && count(p, old) > 0) {
        return None;
    }
    let name = pieces[1 - dirs[0]];
    // The table must explain the order we see before we trust it for the new directory.
    if dir_first(name, old) != (dirs[0] == 0) {
        return None;
    }
    let mut new_order: Vec<usize> = (0..pieces.len()).collect();
    let new_dir_first = dir_first(name, new_dir.as_bytes());
    if new_dir_first != (dirs[0] == 0) {
        new_order.swap(0, 1);
    }
    let mut starts = Vec::with_capacity(pieces.len());
    let mut at = 0u64;
    for p in &pieces {
        starts.push(at);
        at += p.len() as u64 + 1;
    }
    let mut new_strings = Vec::with_capacity(old_strings.len() + 2 * new_dir.len());
    // (old start, old end, new start, replaced), by old start.
    let mut map: Vec<(u64, u64, u64, bool)> = vec![(0, 0, 0, false); pieces.len()];
    for &i in &new_order {
        let is_dir = pieces[i] == old;
        map[i] = (starts[i], starts[i] + pieces[i].len() as u64, new_strings.len() as u64, is_dir);
        new_strings.extend_from_slice(if is_dir { new_dir.as_bytes() } else { pieces[i] });
        new_strings.push(0);
    }
    // The directory must appear nowhere else in the object.
    if count(obj, old) != dirs.len() {
        return None;
    }
    let move_offset = |off: u64| -> Option<u64> {
        let i = map.partition_point(|&(s, _, _, _)| s <= off).checked_sub(1)?;
        let (s, e, ns, is_dir) = map[i];
        if off > e || (is_dir && off != s) {
            return None;
        }
        Some(ns + (off - s))
    };

    // Symbols defined in the string section: only its section symbol, at value 0.
    let mut patched: Vec<Option<Vec<u8>>> = vec![None; shnum];
    for (i, s) in sections.iter().enumerate() {
        if s.ty != SHT_RELA {
            continue;
        }
        if usize::try_from(s.info).ok()? == ls {
            return None;
        }
        let symtab = sections.get(usize::try_from(s.link).ok()?)?.data(obj)?;
        let mut data = s.data(obj)?.to_vec();
        if data.len() % 24 != 0 {
            return None;
        }
        let mut changed = false;
        for r in 0..data.len() / 24 {
            let at = r * 24;
            let info = u64_at(&data, at + 8)?;
            let sym = usize::try_from(info >> 32).ok()?;
            let st = symtab.get(sym * 24..sym * 24 + 24)?;
            let shndx = usize::from(u16_at(st, 6)?);
            if shndx != ls {
                continue;
            }
            if st[4] & 0xf != STT_SECTION
                || u64_at(st, 8)? != 0
                || info & 0xffff_ffff != R_X86_64_32
            {
                return None;
            }
            let addend =
                u64::try_from(i64::from_le_bytes(data.get(at + 16..at + 24)?.try_into().ok()?))
                    .ok()?;
            let moved = i64::try_from(move_offset(addend)?).ok()?;
            data[at + 16..at + 24].copy_from_slice(&moved.to_le_bytes());
            changed = true;
        }
        if changed {
            patched[i] = Some(data);
        }
    }
    for s in &sections {
        if s.ty == 2 {
            // SHT_SYMTAB: no symbol other than the section symbol may live in the string section.
            let data = s.data(obj)?;
            for st in data.chunks_exact(24) {
                if usize::from(u16_at(st, 6)?) == ls
                    && (st[4] & 0xf != STT_SECTION || u64_at(st, 8)? != 0)
                {
                    return None;
                }
            }
        }
    }

    // Layout: the original must be exactly what the rule gives, with zero padding.
    let mut order: Vec<usize> = (1..shnum).collect();
    order.sort_by_key(|&i| (sections[i].offset, i));
    let (offsets, table_at) = layout(&sections, &order)?;
    if table_at != shoff || order.iter().any(|&i| offsets[i] != sections[i].offset) {
        return None;
    }
    let mut covered = vec![false; obj.len()];
    covered[..EHDR].iter_mut().for_each(|c| *c = true);
    for &i in &order {
        let s = &sections[i];
        let a = usize::try_from(s.offset).ok()?;
        let b = a + usize::try_from(s.file_size()).ok()?;
        covered.get_mut(a..b)?.iter_mut().for_each(|c| *c = true);
    }
    covered[table..].iter_mut().for_each(|c| *c = true);
    if covered.iter().zip(obj).any(|(c, b)| !c && *b != 0) {
        return None;
    }

    let mut new_sections = sections.clone();
    new_sections[ls].size = new_strings.len() as u64;
    let (new_offsets, new_table) = layout(&new_sections, &order)?;
    let mut out = vec![0u8; usize::try_from(new_table).ok()? + shnum * SHDR];
    out[..EHDR].copy_from_slice(&obj[..EHDR]);
    out[40..48].copy_from_slice(&new_table.to_le_bytes());
    for &i in &order {
        let s = &new_sections[i];
        if s.ty == SHT_NOBITS {
            continue;
        }
        let data: &[u8] = if i == ls {
            &new_strings
        } else if let Some(p) = &patched[i] {
            p
        } else {
            sections[i].data(obj)?
        };
        let at = usize::try_from(new_offsets[i]).ok()?;
        out.get_mut(at..at + data.len())?.copy_from_slice(data);
    }
    let t = usize::try_from(new_table).ok()?;
    for i in 0..shnum {
        let h = t + i * SHDR;
        out[h..h + SHDR].copy_from_slice(&obj[table + i * SHDR..table + (i + 1) * SHDR]);
        if i > 0 {
            out[h + 24..h + 32].copy_from_slice(&new_offsets[i].to_le_bytes());
            out[h + 32..h + 40].copy_from_slice(&new_sections[i].size.to_le_bytes());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_it_does_not_know() {
        assert_eq!(rewrite_dir(b"not an object", "/a", "/b"), None);
        assert_eq!(rewrite_dir(b"\x7fELF", "/a", "/b"), None);
        assert_eq!(rewrite_dir(b"same", "/a", "/a").as_deref(), Some(&b"same"[..]));
    }

    #[test]
    fn gcc_string_order_follows_its_hash_table() {
        // Measured with gcc 12: lua.c in /tmp/cx/m1/BUILD-1/lua-5.4.4/src came after the
        // directory, in /tmp/cx/m2/BUILD-2-longer/lua-5.4.4/src before it.
        assert!(dir_first(b"lua.c", b"/tmp/cx/m1/BUILD-1/lua-5.4.4/src"));
        assert!(!dir_first(b"lua.c", b"/tmp/cx/m2/BUILD-2-longer/lua-5.4.4/src"));
    }
}
