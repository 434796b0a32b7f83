//! The wrapper's side of the farm tier: after a local miss it asks its agent for the entry (the
//! agent routes the key to one worker), and after a compile it hands the entry over. Both go
//! through the agent socket, on the connection the call already holds where it has one, with
//! short timeouts, so a lost or slow farm tier costs at most [`TIMEOUT`] per call and is then
//! just a miss.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use discomy_protocol::frame::{read_frame, write_frame};
use discomy_protocol::{CacheEntry, Digest, Payload, Request, Response};

/// Environment variable: `0` keeps the cache local (no farm tier).
pub const ENV_CACHE_FARM: &str = "DISCOMY_CACHE_FARM";
/// Limit for each socket operation towards the agent.
pub const TIMEOUT: Duration = Duration::from_millis(200);
/// Largest entry accepted from the farm (decompressed).
pub const MAX_ENTRY: usize = 256 << 20;

/// Whether the farm tier is on (`DISCOMY_CACHE_FARM`).
pub fn enabled() -> bool {
    std::env::var_os(ENV_CACHE_FARM).is_none_or(|v| v != "0")
}

/// What an exchange on a borrowed connection came to.
pub enum Asked<T> {
    /// Answered (or refused) in time; the connection is fine for more.
    Answered(T),
    /// Failed or timed out: the connection's state is unknown, drop it.
    Lost,
}

/// One exchange with the [`TIMEOUT`] limit on `stream`, which is left with no timeout set.
fn exchange(stream: &mut UnixStream, request: &Request) -> Asked<Response> {
    let asked = (|| {
        stream.set_read_timeout(Some(TIMEOUT)).ok()?;
        stream.set_write_timeout(Some(TIMEOUT)).ok()?;
        write_frame(stream, request).ok()?;
        read_frame::<_, Response>(stream).ok()
    })();
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(None);
    match asked {
        Some(r) => Asked::Answered(r),
        None => Asked::Lost,
    }
}

/// The entry body stored under `key` in the farm tier, if it answers in time, asked on the
/// call's agent connection.
pub fn get_on(stream: &mut UnixStream, key: &[u8; 32]) -> Asked<Option<Vec<u8>>> {
    match exchange(stream, &Request::CacheGet(Digest(*key))) {
        Asked::Answered(Response::CacheHit(payload)) => {
            Asked::Answered(payload.decompress(MAX_ENTRY).ok())
        }
        Asked::Answered(_) => Asked::Answered(None),
        Asked::Lost => Asked::Lost,
    }
}

/// Offers an entry to the farm tier (best effort), on the call's agent connection when it has
/// one, else on a new one. On the call's connection the agent's acknowledgement is not waited
/// for: nothing after it on that connection expects an answer (only the call's report follows).
pub fn put(key: &[u8; 32], body: &[u8], stream: Option<&mut UnixStream>) {
    if !enabled() {
        return;
    }
    let request =
        Request::CachePut(CacheEntry { key: Digest(*key), body: Payload::compress(body) });
    match stream {
        Some(stream) => {
            let _ = stream.set_write_timeout(Some(TIMEOUT));
            let _ = write_frame(stream, &request);
        }
        None => {
            let socket = crate::client::socket_path();
            if let Ok(mut agent) = crate::client::AgentClient::connect_within(&socket, TIMEOUT) {
                let _ = exchange(agent.stream(), &request);
            }
        }
    }
}
