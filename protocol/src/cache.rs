//! The object-cache entry: what a compile left (object, dependency file, compiler output), as a
//! wrapper keeps it on disk and as workers store it in the farm tier.
//!
//! Entries cross the wire inside [`crate::Payload`]s ([`crate::Response::CacheHit`],
//! [`crate::CacheEntry`]), postcard-encoded. A farm-tier entry is made by the worker that
//! compiled the unit and names the key it is stored under ([`Entry::farm_key`], derived from
//! the unit by [`crate::SourceCompileRequest::farm_key`]); the owner refuses a put whose entry
//! names another key, and a reader refuses an entry that does not name the key it asked for.

use serde::{Deserialize, Serialize};

use crate::Digest;

/// A stored compile result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The working directory it was compiled in.
    pub cwd: String,
    /// The compiler's standard output.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// The compiler's standard error (warnings).
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// The object (or assembly).
    #[serde(with = "serde_bytes")]
    pub object: Vec<u8>,
    /// The dependency file, when the call writes one.
    #[serde(with = "serde_bytes")]
    pub dep: Option<Vec<u8>>,
    /// The farm node that compiled it (`None`: compiled by the wrapper's host). Entries of a
    /// quarantined node are not served.
    pub node: Option<String>,
    /// The farm-tier key the entry was made for, by the worker that compiled the unit (`None`:
    /// a local compile, kept in the local tier only).
    pub farm_key: Option<Digest>,
}

impl Entry {
    /// The encoded entry (`None` only if postcard fails, which it does not for this type).
    pub fn encode(&self) -> Option<Vec<u8>> {
        postcard::to_stdvec(self).ok()
    }

    /// Decodes an entry's body.
    pub fn decode(body: &[u8]) -> Option<Entry> {
        postcard::from_bytes(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_and_garbage_does_not_decode() {
        let entry = Entry {
            cwd: "/b".into(),
            stdout: vec![],
            stderr: b"w".to_vec(),
            object: vec![0x7f, b'E', b'L', b'F'],
            dep: Some(b"a.o: a.c\n".to_vec()),
            node: Some("n1".into()),
            farm_key: Some(Digest([7; 32])),
        };
        let body = entry.encode().expect("encodes");
        assert_eq!(Entry::decode(&body), Some(entry));
        assert_eq!(Entry::decode(&body[..body.len() - 1]), None);
    }
}
