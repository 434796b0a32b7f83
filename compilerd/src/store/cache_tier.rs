//! The farm tier of the object cache: workers keep a size-bounded store of cache entries (the
//! wrapper's on-disk format, verified on every read), and agents route each key to one worker by
//! rendezvous hashing over their host list, so every agent with the same list asks the same
//! node. A lost or slow worker is a miss after a short timeout, never an error.
//!
//! A worker keeps an index of the keys it stores ([`FarmStore`]), so a unit sent with its key
//! (placed on the worker that owns the key) costs no file-system lookup when it misses.
//!
//! Trust: any peer that passes the handshake (farm token holders, loopback without a token) may
//! store entries, like any shared ccache/sccache storage.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discomy_protocol::asyncio::{Conn, client_handshake, recv, send};
use discomy_protocol::fleet::FleetRole;
use discomy_protocol::tls::FarmStream;
use discomy_protocol::{AuthConfig, CacheEntry, Digest, Payload, Request, Response};
use discomy_wrapper::cache::store::{Kind, Store};
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

/// Most keys a worker's farm tier indexes in memory; past that it asks the disk.
const MAX_INDEXED: usize = 1 << 20;

/// A worker's share of the farm tier: its store of entries, with an index of the keys stored so
/// that a unit sent with its key ([`Request::CompileSourcesCached`]), nearly always a miss,
/// costs no file-system lookup (on a busy host one `stat` there was seen taking 0.3 ms).
pub struct FarmStore {
    store: Store,
    /// The keys on disk, as far as this process knows; `None` past [`MAX_INDEXED`] keys. An
    /// entry evicted meanwhile is a miss when read, and leaves the index then.
    keys: Mutex<Option<HashSet<[u8; 32]>>>,
}

impl FarmStore {
    /// The store next to `toolchain_store` ([`worker_store_dir`]), its keys indexed.
    pub fn open(toolchain_store: &Path) -> FarmStore {
        let store = Store::new(worker_store_dir(toolchain_store), WORKER_STORE_BYTES);
        let keys = index(store.root());
        FarmStore { store, keys: Mutex::new(keys) }
    }

    fn indexed(&self, key: &Digest) -> bool {
        match self.keys.lock() {
            Ok(keys) => keys.as_ref().is_none_or(|k| k.contains(&key.0)),
            Err(_) => true,
        }
    }

    fn note(&self, key: &Digest, stored: bool) {
        if let Ok(mut keys) = self.keys.lock() {
            if let Some(set) = keys.as_mut() {
                if !stored {
                    set.remove(&key.0);
                } else if set.len() < MAX_INDEXED {
                    set.insert(key.0);
                } else {
                    *keys = None;
                }
            }
        }
    }

    /// The entry stored under `key`, compressed for the wire.
    pub async fn get(&self, key: Digest) -> Option<Payload> {
        if !self.indexed(&key) {
            return None;
        }
        let store = self.store.clone();
        let got = tokio::task::spawn_blocking(move || store.get(&key.0, Kind::Result)).await;
        match got {
            Ok(Ok(Some(body))) => Some(Payload::compress(&body)),
            _ => {
                self.note(&key, false);
                None
            }
        }
    }

    /// Serves a cache request; `None` for any other request.
    pub async fn serve(&self, request: &Request) -> Option<Response> {
        match request {
            Request::CacheGet(key) => Some(match self.get(*key).await {
                Some(body) => Response::CacheHit(body),
                None => Response::CacheMiss,
            }),
            Request::CachePut(entry) => {
                let key = entry.key;
                let Ok(body) = entry.body.decompress(MAX_ENTRY) else {
                    return Some(Response::refused(
                        discomy_protocol::RefusalKind::BadRequest,
                        "cache entry payload invalid",
                    ));
                };
                let store = self.store.clone();
                let stored = tokio::task::spawn_blocking(move || {
                    store.put_if_absent(&key.0, Kind::Result, &body)
                })
                .await;
                if matches!(stored, Ok(Ok(_))) {
                    self.note(&key, true);
                } else {
                    debug!(%key, "failed to store a cache entry");
                }
                Some(Response::Stored(key))
            }
            _ => None,
        }
    }
}

/// The keys of the results stored under `root` (`xx/yyyy….r`); `None` when there are more than
/// [`MAX_INDEXED`].
fn index(root: &Path) -> Option<HashSet<[u8; 32]>> {
    let mut keys = HashSet::new();
    let Ok(dirs) = std::fs::read_dir(root) else { return Some(keys) };
    for dir in dirs.flatten() {
        let prefix = dir.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(dir.path()) else { continue };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_suffix(".r") else { continue };
            let Ok(hash) = blake3::Hash::from_hex(format!("{prefix}{rest}")) else { continue };
            if keys.len() >= MAX_INDEXED {
                return None;
            }
            keys.insert(*hash.as_bytes());
        }
    }
    Some(keys)
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
pub struct IdleConns(Mutex<HashMap<String, Vec<Conn<FarmStream>>>>);

/// Idle connections kept per worker.
const IDLE_PER_HOST: usize = 4;

impl IdleConns {
    fn take(&self, addr: &str) -> Option<Conn<FarmStream>> {
        self.0.lock().ok()?.get_mut(addr)?.pop()
    }

    fn give_back(&self, addr: String, conn: Conn<FarmStream>) {
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
                let stream = crate::fleet::connect(&addr, FleetRole::Worker).await.ok()?;
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

    /// A put never replaces an entry others may already read: the first one stays.
    #[tokio::test]
    async fn the_first_entry_under_a_key_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let farm = FarmStore::open(dir.path());
        let key = Digest(*blake3::hash(b"unit").as_bytes());
        for body in [&b"first"[..], b"second, from someone else"] {
            let put = Request::CachePut(discomy_protocol::CacheEntry {
                key,
                body: Payload::compress(body),
            });
            assert!(matches!(farm.serve(&put).await, Some(Response::Stored(k)) if k == key));
        }
        let got = farm.get(key).await.expect("stored").decompress(MAX_ENTRY).expect("payload");
        assert_eq!(got, b"first");
    }
}
