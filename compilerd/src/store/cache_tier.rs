//! The farm tier of the object cache: workers keep a size-bounded store of cache entries (the
//! wrapper's on-disk format, verified on every read), and agents route each key to one worker by
//! rendezvous hashing over their host list, so every agent with the same list asks the same
//! node. A lost or slow worker is a miss after a short timeout, never an error.
//!
//! Trust: any peer that passes the handshake (farm token holders, loopback without a token) may
//! store entries, like any shared ccache/sccache storage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discomy_protocol::asyncio::{Conn, client_handshake, recv, send};
use discomy_protocol::{AuthConfig, CacheEntry, Digest, Payload, Request, Response};
use discomy_wrapper::cache::store::{Kind, Store};
use tokio::net::TcpStream;
use tracing::debug;

use crate::hosts::HostSpec;

/// Size bound of a worker's object store.
pub const WORKER_STORE_BYTES: u64 = 4 << 30;
/// Largest entry accepted (decompressed).
const MAX_ENTRY: usize = 256 << 20;
/// Connect plus handshake limit towards the worker holding a key.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// Answer limit for a lookup or a store on that worker.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a worker keeps entries: next to its toolchain store.
pub fn worker_store_dir(toolchain_store: &Path) -> PathBuf {
    let mut name = toolchain_store.as_os_str().to_os_string();
    name.push(".objects");
    PathBuf::from(name)
}

/// Serves a cache request on a worker; `None` for any other request.
pub async fn serve_worker(dir: &Path, request: &Request) -> Option<Response> {
    let store = Store::new(dir.to_path_buf(), WORKER_STORE_BYTES);
    match request {
        Request::CacheGet(key) => {
            let key = key.0;
            let got = tokio::task::spawn_blocking(move || store.get(&key, Kind::Result)).await;
            Some(match got {
                Ok(Ok(Some(body))) => Response::CacheHit(Payload::compress(&body)),
                _ => Response::CacheMiss,
            })
        }
        Request::CachePut(entry) => {
            let key = entry.key;
            let Ok(body) = entry.body.decompress(MAX_ENTRY) else {
                return Some(Response::refused(
                    discomy_protocol::RefusalKind::BadRequest,
                    "cache entry payload invalid",
                ));
            };
            let stored =
                tokio::task::spawn_blocking(move || store.put(&key.0, Kind::Result, &body)).await;
            if !matches!(stored, Ok(Ok(_))) {
                debug!(%key, "failed to store a cache entry");
            }
            Some(Response::Stored(key))
        }
        _ => None,
    }
}

/// The worker responsible for `key`: highest blake3(key ‖ address) over the host list.
pub fn owner<'a>(hosts: &'a [HostSpec], key: &Digest) -> Option<&'a HostSpec> {
    hosts.iter().max_by_key(|h| {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&key.0);
        hasher.update(h.address().as_bytes());
        *hasher.finalize().as_bytes()
    })
}

/// An agent's idle connections to the workers holding cache keys, reused so that a lookup costs
/// one round trip, not a connection and a handshake.
#[derive(Default)]
pub struct IdleConns(Mutex<HashMap<String, Vec<Conn<TcpStream>>>>);

/// Idle connections kept per worker.
const IDLE_PER_HOST: usize = 4;

impl IdleConns {
    fn take(&self, addr: &str) -> Option<Conn<TcpStream>> {
        self.0.lock().ok()?.get_mut(addr)?.pop()
    }

    fn give_back(&self, addr: String, conn: Conn<TcpStream>) {
        if let Ok(mut map) = self.0.lock() {
            let idle = map.entry(addr).or_default();
            if idle.len() < IDLE_PER_HOST {
                idle.push(conn);
            }
        }
    }
}

/// Serves a wrapper's cache request on an agent; `None` for any other request. Stores are
/// acknowledged at once and forwarded in the background.
pub async fn serve_agent(
    hosts: &[HostSpec],
    auth: &AuthConfig,
    idle: &Arc<IdleConns>,
    request: &Request,
) -> Option<Response> {
    match request {
        Request::CacheGet(key) => {
            let Some(host) = owner(hosts, key) else { return Some(Response::CacheMiss) };
            Some(match ask(host, auth, idle, request).await {
                Some(r @ Response::CacheHit(_)) => r,
                _ => Response::CacheMiss,
            })
        }
        Request::CachePut(CacheEntry { key, .. }) => {
            let key = *key;
            if let Some(host) = owner(hosts, &key).cloned() {
                let auth = auth.clone();
                let request = request.clone();
                let idle = idle.clone();
                tokio::spawn(async move {
                    let _ = ask(&host, &auth, &idle, &request).await;
                });
            }
            Some(Response::Stored(key))
        }
        _ => None,
    }
}

async fn ask(
    host: &HostSpec,
    auth: &AuthConfig,
    idle: &IdleConns,
    request: &Request,
) -> Option<Response> {
    let addr = host.address();
    // An idle connection the worker has closed meanwhile fails at once: try a new one then.
    for reused in [true, false] {
        let conn = if reused {
            idle.take(&addr)
        } else {
            let connect = async {
                let stream = TcpStream::connect(&addr).await.ok()?;
                let _ = stream.set_nodelay(true);
                client_handshake(stream, auth).await.ok()
            };
            tokio::time::timeout(CONNECT_TIMEOUT, connect).await.ok()?
        };
        let Some(mut conn) = conn else { continue };
        let exchange = async {
            send(&mut conn, request).await.ok()?;
            recv::<_, Response>(&mut conn).await.ok()
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
            Ok(Some(answer)) => {
                debug!(%addr, hit = matches!(answer, Response::CacheHit(_)), reused, "farm cache tier");
                idle.give_back(addr, conn);
                return Some(answer);
            }
            Ok(None) if reused => continue,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_with_the_same_list_picks_the_same_owner() {
        let hosts: Vec<HostSpec> =
            crate::hosts::parse_host_list("10.0.0.1,10.0.0.2:3634,10.0.0.3/8").expect("hosts");
        let mut reversed = hosts.clone();
        reversed.reverse();
        let mut owners = std::collections::BTreeSet::new();
        for i in 0..64u8 {
            let key = Digest(*blake3::hash(&[i]).as_bytes());
            let a = owner(&hosts, &key).map(HostSpec::address);
            assert_eq!(a, owner(&reversed, &key).map(HostSpec::address));
            owners.insert(a);
        }
        assert_eq!(owners.len(), 3, "keys spread over every host");
    }
}
