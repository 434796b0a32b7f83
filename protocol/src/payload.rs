//! Payloads: lz4-compressed bytes with their raw length and blake3 digest.
//!
//! Decompression is capped ([`MAX_RAW_LEN`] or a caller's lower cap) before any allocation, and
//! the digest is verified, so a hostile peer cannot make a node allocate without bound or swap
//! content in transit undetected.

use serde::{Deserialize, Serialize};

use crate::{Digest, ProtocolError};

/// Largest decompressed payload any node accepts (a preprocessed unit or an object file).
pub const MAX_RAW_LEN: usize = 512 << 20;

/// Compressed content with its size and digest.
#[derive(Clone, Serialize, Deserialize)]
pub struct Payload {
    /// Length after decompression.
    pub raw_len: u64,
    /// blake3 of the decompressed bytes.
    pub digest: Digest,
    /// lz4 block-compressed bytes.
    #[serde(with = "serde_bytes")]
    pub lz4: Vec<u8>,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} -> {} bytes, {:?})", self.lz4.len(), self.raw_len, self.digest)
    }
}

impl Payload {
    /// Compresses `raw`.
    pub fn compress(raw: &[u8]) -> Payload {
        Payload {
            raw_len: raw.len() as u64,
            digest: Digest::of(raw),
            lz4: lz4_flex::block::compress(raw),
        }
    }

    /// Decompresses, refusing payloads whose raw length exceeds `cap` and checking the digest.
    pub fn decompress(&self, cap: usize) -> Result<Vec<u8>, ProtocolError> {
        let cap = cap.min(MAX_RAW_LEN);
        let len = usize::try_from(self.raw_len).unwrap_or(usize::MAX);
        if len > cap {
            return Err(ProtocolError::Payload(format!(
                "announced size {} exceeds the cap of {cap} bytes",
                self.raw_len
            )));
        }
        let raw = lz4_flex::block::decompress(&self.lz4, len)
            .map_err(|e| ProtocolError::Payload(format!("lz4: {e}")))?;
        if raw.len() != len {
            return Err(ProtocolError::Payload(format!(
                "decompressed to {} bytes, announced {len}",
                raw.len()
            )));
        }
        if Digest::of(&raw) != self.digest {
            return Err(ProtocolError::Payload("digest mismatch".into()));
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let raw = b"int main(void) { return 0; }\n".repeat(100);
        let p = Payload::compress(&raw);
        assert!(p.lz4.len() < raw.len());
        assert_eq!(p.decompress(MAX_RAW_LEN).unwrap(), raw);
    }

    #[test]
    fn bomb_is_refused() {
        let mut p = Payload::compress(&vec![0u8; 1 << 20]);
        assert!(p.decompress(1 << 10).is_err());
        p.raw_len = u64::MAX;
        assert!(p.decompress(MAX_RAW_LEN).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let mut p = Payload::compress(b"abcdefgh");
        p.digest = Digest::of(b"other");
        assert!(p.decompress(1024).is_err());
        let mut q = Payload::compress(b"abcdefgh");
        q.lz4 = vec![0xff; 4];
        assert!(q.decompress(1024).is_err());
    }
}
