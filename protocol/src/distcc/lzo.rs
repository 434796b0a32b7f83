//! LZO1X-1, the raw stream format distcc compresses bodies with (protocol 2 and 3).
//!
//! Our own code (the fast encoders on crates.io are GPL). The stream has no header and no length:
//! it ends with the end-of-stream marker `11 00 00`. [`compress`] follows miniLZO's
//! `lzo1x_1_compress` (a 16 Ki-entry hash of 4-byte sequences, skipping faster through
//! incompressible input); [`decompress`] accepts any valid LZO1X stream, checks every read and
//! copy, and stops with [`LzoError::TooLarge`] once the output would pass the caller's cap, so a
//! decompression bomb costs at most `cap` bytes.

/// Why a stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LzoError {
    /// The stream ended before its end-of-stream marker.
    #[error("LZO stream is truncated")]
    Truncated,
    /// A match refers to data before the start of the output.
    #[error("LZO stream refers before the start of its output")]
    BadDistance,
    /// The decompressed size would exceed the cap (a decompression bomb, or a body too large).
    #[error("LZO stream expands beyond the {0}-byte limit")]
    TooLarge(usize),
    /// Bytes follow the end-of-stream marker.
    #[error("LZO stream has {0} bytes after its end marker")]
    TrailingBytes(usize),
}

const D_BITS: u32 = 14;
const DICT_LEN: usize = 1 << D_BITS;
const M2_MAX_LEN: usize = 8;
const M2_MAX_OFFSET: usize = 0x0800;
const M3_MAX_LEN: usize = 33;
const M3_MAX_OFFSET: usize = 0x4000;
const M4_MAX_LEN: usize = 9;
const M4_MAX_OFFSET: usize = 0xbfff;
const M3_MARKER: u8 = 32;
const M4_MARKER: u8 = 16;

/// Compresses `input` into one raw LZO1X stream (end marker included).
pub fn compress(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 16 + 64 + 3);
    let tail =
        if input.len() <= M2_MAX_LEN + 5 { input.len() } else { compress_core(input, &mut out) };
    let start = input.len() - tail;
    if tail > 0 {
        push_literals(&mut out, &input[start..], true);
    }
    out.extend_from_slice(&[M4_MARKER | 1, 0, 0]);
    out
}

/// Emits a literal run. `final_run` allows the stream-opening short form (17 + n).
fn push_literals(out: &mut Vec<u8>, lit: &[u8], final_run: bool) {
    let t = lit.len();
    if out.is_empty() && final_run && t <= 238 {
        out.push((17 + t) as u8);
    } else if t <= 3 {
        // The low two bits of the previous match's last-but-one byte count these literals.
        let at = out.len() - 2;
        out[at] |= t as u8;
    } else if t <= 18 {
        out.push((t - 3) as u8);
    } else {
        let mut tt = t - 18;
        out.push(0);
        while tt > 255 {
            tt -= 255;
            out.push(0);
        }
        out.push(tt as u8);
    }
    if t <= 3 {
        for &b in lit {
            out.push(b);
        }
    } else {
        out.extend_from_slice(lit);
    }
}

fn push_len_ext(out: &mut Vec<u8>, mut len: usize) {
    while len > 255 {
        len -= 255;
        out.push(0);
    }
    out.push(len as u8);
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let w = &b[at..at + 4];
    u32::from_le_bytes([w[0], w[1], w[2], w[3]])
}

/// How many leading bytes `a` and `b` share (`b` is the later position, so the shorter one),
/// eight at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut n = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let y = u64::from_le_bytes([y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]]);
        let diff = x ^ y;
        if diff != 0 {
            return n + (diff.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + a[n..].iter().zip(&b[n..]).take_while(|(x, y)| x == y).count()
}

/// The main loop; returns how many trailing bytes are left as literals.
fn compress_core(input: &[u8], out: &mut Vec<u8>) -> usize {
    let in_len = input.len();
    let ip_end = in_len - M2_MAX_LEN - 5;
    let mut dict = vec![0u32; DICT_LEN].into_boxed_slice();
    let mut ii = 0usize; // start of pending literals
    let mut ip = 4usize;
    loop {
        if ip >= ip_end {
            break;
        }
        let dv = read_u32(input, ip);
        let h = ((dv.wrapping_mul(0x1824_429d)) >> (32 - D_BITS)) as usize & (DICT_LEN - 1);
        let m_pos = dict[h] as usize;
        dict[h] = ip as u32;
        if m_pos >= ip || ip - m_pos > M4_MAX_OFFSET || read_u32(input, m_pos) != dv {
            ip += 1 + ((ip - ii) >> 5);
            continue;
        }
        if ip > ii {
            push_literals(out, &input[ii..ip], false);
        }
        let m_len = 4 + common_prefix(&input[m_pos + 4..], &input[ip + 4..]);
        let m_off = ip - m_pos;
        ip += m_len;
        ii = ip;
        if m_len <= M2_MAX_LEN && m_off <= M2_MAX_OFFSET {
            let off = m_off - 1;
            out.push((((m_len - 1) << 5) | ((off & 7) << 2)) as u8);
            out.push((off >> 3) as u8);
        } else {
            let off = if m_off <= M3_MAX_OFFSET {
                let off = m_off - 1;
                if m_len <= M3_MAX_LEN {
                    out.push(M3_MARKER | (m_len - 2) as u8);
                } else {
                    out.push(M3_MARKER);
                    push_len_ext(out, m_len - M3_MAX_LEN);
                }
                off
            } else {
                let off = m_off - 0x4000;
                let hi = ((off >> 11) & 8) as u8;
                if m_len <= M4_MAX_LEN {
                    out.push(M4_MARKER | hi | (m_len - 2) as u8);
                } else {
                    out.push(M4_MARKER | hi);
                    push_len_ext(out, m_len - M4_MAX_LEN);
                }
                off
            };
            out.push(((off & 0x3f) << 2) as u8);
            out.push((off >> 6) as u8);
        }
    }
    in_len - ii
}

/// Reads input bytes with bounds checks.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, LzoError> {
        let b = *self.buf.get(self.pos).ok_or(LzoError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], LzoError> {
        let end = self.pos.checked_add(n).ok_or(LzoError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(LzoError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// `base` plus 255 per zero byte plus the first non-zero byte.
    fn ext_len(&mut self, base: usize) -> Result<usize, LzoError> {
        let mut len = base;
        loop {
            match self.byte()? {
                0 => len = len.checked_add(255).ok_or(LzoError::Truncated)?,
                b => return Ok(len + b as usize),
            }
        }
    }
}

fn push_lits(out: &mut Vec<u8>, r: &mut Reader<'_>, n: usize, cap: usize) -> Result<(), LzoError> {
    if out.len().saturating_add(n) > cap {
        return Err(LzoError::TooLarge(cap));
    }
    let lits = r.take(n)?;
    if n <= 3 {
        // The 0-3 literals after most matches: no memcpy call for them.
        for &b in lits {
            out.push(b);
        }
    } else {
        out.extend_from_slice(lits);
    }
    Ok(())
}

fn copy_match(out: &mut Vec<u8>, dist: usize, len: usize, cap: usize) -> Result<(), LzoError> {
    if dist == 0 || dist > out.len() {
        return Err(LzoError::BadDistance);
    }
    if out.len().saturating_add(len) > cap {
        return Err(LzoError::TooLarge(cap));
    }
    let start = out.len() - dist;
    if len <= 8 && dist >= 8 {
        // Short, non-overlapping (most matches): one fixed 8-byte copy, then trim.
        let end = out.len() + len;
        let w = &out[start..start + 8];
        let word = [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]];
        out.extend_from_slice(&word);
        out.truncate(end);
        return Ok(());
    }
    let mut left = len;
    // Overlapping copies repeat the last `dist` bytes: `out[start..]` stays periodic, so copy it
    // whole each round (the chunk doubles: a long run of one byte costs a few memcpys).
    while left > 0 {
        let n = left.min(out.len() - start);
        out.extend_from_within(start..start + n);
        left -= n;
    }
    Ok(())
}

/// Decodes one raw LZO1X stream, refusing to produce more than `cap` bytes.
pub fn decompress(input: &[u8], cap: usize) -> Result<Vec<u8>, LzoError> {
    let mut out = Vec::with_capacity(input.len().saturating_mul(4).min(cap).min(64 << 20));
    let mut r = Reader { buf: input, pos: 0 };
    // `state`: literals copied after the previous instruction (0-3), or 4 after a long run.
    let mut state: usize;
    let first = *input.first().ok_or(LzoError::Truncated)?;
    if first > 17 {
        r.pos = 1;
        let n = first as usize - 17;
        push_lits(&mut out, &mut r, n, cap)?;
        state = if n < 4 { n } else { 4 };
    } else {
        state = 0;
    }
    loop {
        let t = r.byte()? as usize;
        let (len, dist, lits);
        if t < 16 {
            match state {
                0 => {
                    let n = if t == 0 { r.ext_len(15)? } else { t } + 3;
                    push_lits(&mut out, &mut r, n, cap)?;
                    state = 4;
                    continue;
                }
                1..=3 => {
                    let h = r.byte()? as usize;
                    (len, dist, lits) = (2, 1 + (t >> 2) + (h << 2), t & 3);
                }
                _ => {
                    let h = r.byte()? as usize;
                    (len, dist, lits) = (3, 2049 + (t >> 2) + (h << 2), t & 3);
                }
            }
        } else if t < 32 {
            let l = if t & 7 == 0 { r.ext_len(7)? } else { t & 7 } + 2;
            let d = u16::from_le_bytes([r.byte()?, r.byte()?]) as usize;
            let far = ((t & 8) << 11) + (d >> 2);
            if far == 0 {
                return match input.len() - r.pos {
                    0 => Ok(out),
                    n => Err(LzoError::TrailingBytes(n)),
                };
            }
            (len, dist, lits) = (l, far + 0x4000, d & 3);
        } else if t < 64 {
            let l = if t & 31 == 0 { r.ext_len(31)? } else { t & 31 } + 2;
            let d = u16::from_le_bytes([r.byte()?, r.byte()?]) as usize;
            (len, dist, lits) = (l, (d >> 2) + 1, d & 3);
        } else {
            let h = r.byte()? as usize;
            let l = if t >= 128 { 5 + ((t >> 5) & 3) } else { 3 + ((t >> 5) & 1) };
            (len, dist, lits) = (l, 1 + ((t >> 2) & 7) + (h << 3), t & 3);
        }
        copy_match(&mut out, dist, len, cap)?;
        push_lits(&mut out, &mut r, lits, cap)?;
        state = lits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator: property-style inputs without a dependency.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    fn sample(seed: u64, len: usize) -> Vec<u8> {
        let mut next = rng(seed);
        let alphabet = (next() % 255 + 1) as u8;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            match next() % 4 {
                0 if !v.is_empty() => {
                    let back = (next() as usize % v.len().min(60000)) + 1;
                    let n = (next() as usize % 300).min(len - v.len());
                    let from = v.len() - back;
                    for i in 0..n {
                        let b = v[from + i];
                        v.push(b);
                    }
                }
                _ => v.push((next() % alphabet as u64) as u8),
            }
        }
        v
    }

    #[test]
    fn round_trips_random_inputs() {
        for seed in 0..300u64 {
            let len = match seed % 5 {
                0 => seed as usize % 20,
                1 => seed as usize * 7,
                _ => (seed as usize * 977) % 70000,
            };
            let input = sample(seed, len);
            let packed = compress(&input);
            assert_eq!(decompress(&packed, usize::MAX).unwrap(), input, "seed {seed} len {len}");
        }
    }

    #[test]
    fn round_trips_edge_shapes() {
        let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0], vec![7; 14], vec![0; 100_000]];
        inputs.push(
            (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761u32) >> 24) as u8).collect(),
        );
        inputs.push(b"int main(void) { return 0; }\n".repeat(5000));
        for n in 0..300 {
            inputs.push((0..n).map(|i| (i % 7) as u8).collect());
        }
        for input in inputs {
            let packed = compress(&input);
            assert_eq!(&packed[packed.len() - 3..], &[0x11, 0, 0]);
            assert_eq!(decompress(&packed, usize::MAX).unwrap(), input, "len {}", input.len());
        }
    }

    #[test]
    fn compresses_text_well() {
        let text =
            b"static int lua_foo (lua_State *L) { return luaL_checkinteger(L, 1); }\n".repeat(2000);
        assert!(compress(&text).len() < text.len() / 10);
    }

    #[test]
    fn truncated_and_garbage_streams_are_errors_not_panics() {
        let input = sample(42, 50_000);
        let packed = compress(&input);
        for cut in [0, 1, 2, 10, packed.len() / 2, packed.len() - 1] {
            assert!(decompress(&packed[..cut], usize::MAX).is_err(), "cut {cut}");
        }
        let mut next = rng(7);
        for _ in 0..2000 {
            let len = next() as usize % 200;
            let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decompress(&junk, 1 << 20);
        }
        let mut extra = packed.clone();
        extra.push(0);
        assert_eq!(decompress(&extra, usize::MAX), Err(LzoError::TrailingBytes(1)));
    }

    #[test]
    fn bombs_stop_at_the_cap() {
        // One literal, then M3 matches of distance 1 whose length extensions are all zeros.
        let mut bomb = vec![18, b'A'];
        for _ in 0..100 {
            bomb.push(M3_MARKER);
            bomb.extend(std::iter::repeat_n(0, 1000));
            bomb.extend([1, 0, 0]);
        }
        bomb.extend([0x11, 0, 0]);
        let full = decompress(&bomb, usize::MAX).unwrap();
        assert!(full.len() > 25_000_000 && full.iter().all(|&b| b == b'A'));
        assert_eq!(decompress(&bomb, 1 << 20), Err(LzoError::TooLarge(1 << 20)));
    }

    #[test]
    fn decodes_a_distcc_stream_start() {
        // The start of a real distcc 3.4 DOTO body (`05 7f 45 4c 46`: 4+3 literals `\x7fELF`).
        let stream = [0x05, 0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0x11, 0, 0];
        assert_eq!(decompress(&stream, 100).unwrap(), b"\x7fELF\x02\x01\x01\x00");
    }
}
