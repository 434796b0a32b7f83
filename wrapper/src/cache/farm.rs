//! The wrapper's side of the farm tier: after a local miss it asks its agent for the entry (the
//! agent routes the key to one worker), and after a compile it hands the entry over. Both go
//! through the agent socket with short timeouts, so a lost or slow farm tier costs at most
//! [`TIMEOUT`] per call and is then just a miss.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use discomy_protocol::frame::{read_frame, write_frame};
use discomy_protocol::handshake::client_handshake;
use discomy_protocol::{AuthConfig, CacheEntry, Digest, Payload, Request, Response};

/// Environment variable: `0` keeps the cache local (no farm tier).
pub const ENV_CACHE_FARM: &str = "DISCOMY_CACHE_FARM";
/// Limit for each socket operation towards the agent.
pub const TIMEOUT: Duration = Duration::from_millis(200);
/// Largest entry accepted from the farm (decompressed).
const MAX_ENTRY: usize = 256 << 20;

fn connect() -> Option<UnixStream> {
    if std::env::var_os(ENV_CACHE_FARM).is_some_and(|v| v == "0") {
        return None;
    }
    let mut stream = UnixStream::connect(crate::client::socket_path()).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(TIMEOUT)).ok()?;
    client_handshake(&mut stream, &AuthConfig::none()).ok()?;
    Some(stream)
}

/// The entry body stored under `key` in the farm tier, if it answers in time.
pub fn get(key: &[u8; 32]) -> Option<Vec<u8>> {
    let mut stream = connect()?;
    write_frame(&mut stream, &Request::CacheGet(Digest(*key))).ok()?;
    match read_frame(&mut stream).ok()? {
        Response::CacheHit(payload) => payload.decompress(MAX_ENTRY).ok(),
        _ => None,
    }
}

/// Offers an entry to the farm tier (best effort).
pub fn put(key: &[u8; 32], body: &[u8]) {
    let Some(mut stream) = connect() else { return };
    let request =
        Request::CachePut(CacheEntry { key: Digest(*key), body: Payload::compress(body) });
    if write_frame(&mut stream, &request).is_ok() {
        let _ = read_frame::<_, Response>(&mut stream);
    }
}
