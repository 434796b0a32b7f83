//! The farm tier of the object cache: workers keep a size-bounded store of cache entries (the
//! wrapper's on-disk format, verified on every read), and agents route each key to one worker by
//! rendezvous hashing over their host list, so every agent with the same list asks the same
//! node. A lost or slow worker is a miss after a short timeout, never an error.
//!
//! A worker keeps an index of the keys it stores ([`FarmStore`]), so a unit sent with its key
//! (placed on the worker that owns the key) costs no file-system lookup when it misses.
//!
//! Trust: only workers write. The worker that compiles a source-mode unit derives the unit's key
//! itself ([`discomy_protocol::SourceCompileRequest::farm_key`]), makes the entry and keeps it
//! ([`FarmStore::keep`]) or hands it to the key's owner ([`push`]); the owner takes a
//! [`Request::CachePut`] only from a worker (its certificate's role under the fleet's TLS; on a
//! plain lab farm any token holder is every role), only if the entry names that key, and only if
//! absent. Agents and wrappers read; a hostile client can get its own unit's result stored, never
//! an object under another unit's key.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discomy_protocol::asyncio::{Conn, client_handshake, recv, send};
use discomy_protocol::cache::Entry;
use discomy_protocol::fleet::FleetRole;
use discomy_protocol::message::MAX_STORE_AT;
use discomy_protocol::sources::FarmKeyFacts;
use discomy_protocol::tls::FarmStream;
use discomy_protocol::{
    AuthConfig, CacheEntry, Digest, Payload, RefusalKind, Request, Response, SourceCompileRequest,
};
use discomy_wrapper::cache::store::{Kind, Store};
use tracing::debug;

use crate::hosts::HostSpec;
use crate::store::sources::SourceStore;

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
    /// Connections to the workers this one hands entries to ([`FarmStore::push`]).
    owners: Arc<IdleConns>,
    /// Each file's [`FarmKeyFacts`] for a working directory, by blake3(digest ‖ directory): the
    /// same headers come unit after unit, and reading them for every key would cost more than
    /// the lookup saves. Cleared when full.
    facts: Mutex<HashMap<[u8; 32], FarmKeyFacts>>,
}

/// Most files whose facts are remembered ([`FarmStore::unit_key`]).
const MAX_FACTS: usize = 1 << 18;

impl FarmStore {
    /// The store next to `toolchain_store` ([`worker_store_dir`]), its keys indexed.
    pub fn open(toolchain_store: &Path) -> FarmStore {
        let store = Store::new(worker_store_dir(toolchain_store), WORKER_STORE_BYTES);
        let keys = index(store.root());
        FarmStore { store, keys: Mutex::new(keys), owners: Arc::default(), facts: Mutex::default() }
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

    /// The farm-tier key of `unit`, derived here from the unit and its files as stored in
    /// `sources` (blocking: it may read them). `Ok(None)`: the unit is not cacheable (a file
    /// uses a time macro); `Err`: a file is not stored here (yet).
    pub fn unit_key(
        &self,
        unit: &SourceCompileRequest,
        sources: &SourceStore,
    ) -> Result<Option<Digest>, Digest> {
        let mut facts = FarmKeyFacts::NONE;
        for file in &unit.files {
            let mut h = blake3::Hasher::new();
            h.update(&file.digest.0);
            h.update(unit.cwd.as_bytes());
            let memo = *h.finalize().as_bytes();
            let known = self.facts.lock().ok().and_then(|f| f.get(&memo).copied());
            let of_file = match known {
                Some(known) => known,
                None => {
                    let content = sources
                        .path(&file.digest)
                        .and_then(|p| std::fs::read(p).ok())
                        .ok_or(file.digest)?;
                    let found = FarmKeyFacts::of_file(&content, &unit.cwd);
                    if let Ok(mut memos) = self.facts.lock() {
                        if memos.len() >= MAX_FACTS {
                            memos.clear();
                        }
                        memos.insert(memo, found);
                    }
                    found
                }
            };
            facts = facts.and(of_file);
        }
        let facts = unit.farm_key_facts(facts);
        Ok(facts.cacheable.then(|| unit.farm_key(facts)))
    }

    /// Keeps an entry this worker made under the key it derived, if none is stored yet (off
    /// the runtime's threads).
    pub async fn keep(&self, key: Digest, body: Vec<u8>) {
        let store = self.store.clone();
        let stored =
            tokio::task::spawn_blocking(move || store.put_if_absent(&key.0, Kind::Result, &body))
                .await;
        if matches!(stored, Ok(Ok(_))) {
            self.note(&key, true);
        } else {
            debug!(%key, "failed to store a cache entry");
        }
    }

    /// Serves a cache request; `None` for any other request. `from_worker`: the peer proved a
    /// worker's role (or the farm has no roles), the only peer whose puts are taken.
    pub async fn serve(&self, request: &Request, from_worker: bool) -> Option<Response> {
        let refused = |why: &str| Some(Response::refused(RefusalKind::BadRequest, why));
        match request {
            Request::CacheGet(key) => Some(match self.get(*key).await {
                Some(body) => Response::CacheHit(body),
                None => Response::CacheMiss,
            }),
            Request::CachePut(_) if !from_worker => {
                refused("only a worker stores entries in the farm tier")
            }
            Request::CachePut(entry) => {
                let key = entry.key;
                let Ok(body) = entry.body.decompress(MAX_ENTRY) else {
                    return refused("cache entry payload invalid");
                };
                if Entry::decode(&body).is_none_or(|e| e.farm_key != Some(key)) {
                    return refused("the cache entry does not name the key it is put under");
                }
                self.keep(key, body).await;
                Some(Response::Stored(key))
            }
            _ => None,
        }
    }
}

/// The entry a worker made for a unit whose compile `response` answered, bound to `key` (the key
/// the worker derived from the unit); `None` for anything but a clean compile (a failure,
/// diagnostics, no output): the wrapper replays those locally and keeps them out of the tier.
pub fn entry_of(response: &Response, key: Digest, cwd: String, node: &str) -> Option<Vec<u8>> {
    let (result, dep) = match response {
        Response::Compiled(result) => (result, None),
        Response::CompiledSources(r) => (&r.result, Some(r.dep_file.clone())),
        _ => return None,
    };
    if result.exit_code != 0 || !result.stderr.is_empty() {
        return None;
    }
    let object = result.output.as_ref()?.decompress(MAX_ENTRY).ok()?;
    let entry = Entry {
        cwd,
        stdout: result.stdout.clone(),
        stderr: Vec::new(),
        object,
        dep,
        node: Some(node.to_string()),
        farm_key: Some(key),
    };
    entry.encode()
}

impl FarmStore {
    /// Hands an entry this worker made to the worker owning its key (`owner`, `host:port`), in
    /// the background; a lost owner loses the entry, nothing else.
    pub fn push(&self, owner: &str, auth: &AuthConfig, key: Digest, body: &[u8]) {
        push(owner, auth, &self.owners, key, body);
    }
}

fn push(owner: &str, auth: &AuthConfig, idle: &Arc<IdleConns>, key: Digest, body: &[u8]) {
    let host = match crate::hosts::parse_host_list(owner) {
        Ok(mut hosts) if hosts.len() == 1 && owner.len() <= MAX_STORE_AT => hosts.remove(0),
        _ => {
            debug!(owner, "not a worker address; entry not handed over");
            return;
        }
    };
    let request = Request::CachePut(CacheEntry { key, body: Payload::compress(body) });
    let (auth, idle) = (auth.clone(), idle.clone());
    tokio::spawn(async move {
        let answer = ask(&host, &auth, &idle, &request).await;
        if !matches!(answer, Some(Response::Stored(_))) {
            debug!(owner = %host.address(), ?answer, "the key's owner did not take the entry");
        }
    });
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
        let mut map = self.0.lock().ok()?;
        let idle = map.get_mut(addr)?;
        // A worker revoked since it served the connection is not asked again on it.
        idle.retain(|c| !crate::fleet::peer_revoked(c.get_ref()));
        idle.pop()
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

/// Serves a lookup ([`Request::CacheGet`]) on an agent, asking the key's owner; `None` for any
/// other request (an agent stores nothing in the farm tier).
pub async fn serve_agent(
    hosts: &[HostSpec],
    auth: &AuthConfig,
    idle: &Arc<IdleConns>,
    request: &Request,
) -> Option<Response> {
    let Request::CacheGet(key) = request else { return None };
    let Some(host) = owner(hosts, key) else { return Some(Response::CacheMiss) };
    Some(match ask(host, auth, idle, request).await {
        Some(r @ Response::CacheHit(_)) => r,
        _ => Response::CacheMiss,
    })
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

    fn entry(key: Digest, object: &[u8]) -> Payload {
        let entry = Entry {
            cwd: "/b".into(),
            stdout: vec![],
            stderr: vec![],
            object: object.to_vec(),
            dep: None,
            node: Some("w".into()),
            farm_key: Some(key),
        };
        Payload::compress(&entry.encode().expect("encodes"))
    }

    fn object_under(body: Payload) -> Vec<u8> {
        let body = body.decompress(MAX_ENTRY).expect("payload");
        Entry::decode(&body).expect("an entry").object
    }

    /// A put never replaces an entry others may already read: the first one stays.
    #[tokio::test]
    async fn the_first_entry_under_a_key_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let farm = FarmStore::open(dir.path());
        let key = Digest(*blake3::hash(b"unit").as_bytes());
        for object in [&b"first"[..], b"second, from someone else"] {
            let put = Request::CachePut(CacheEntry { key, body: entry(key, object) });
            let stored = farm.serve(&put, true).await;
            assert!(matches!(stored, Some(Response::Stored(k)) if k == key), "{stored:?}");
        }
        assert_eq!(object_under(farm.get(key).await.expect("stored")), b"first");
    }

    /// Only a worker stores, and only an entry made for the key it is put under: an agent, a
    /// wrapper or a client cannot place an object under another unit's key.
    #[tokio::test]
    async fn a_put_from_a_non_worker_or_for_another_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let farm = FarmStore::open(dir.path());
        let key = Digest(*blake3::hash(b"victim unit").as_bytes());
        let other = Digest(*blake3::hash(b"attacker's unit").as_bytes());
        let from_agent = Request::CachePut(CacheEntry { key, body: entry(key, b"evil") });
        let named_other = Request::CachePut(CacheEntry { key, body: entry(other, b"evil") });
        let unbound = Request::CachePut(CacheEntry { key, body: Payload::compress(b"raw") });
        let answers = [
            farm.serve(&from_agent, false).await,
            farm.serve(&named_other, true).await,
            farm.serve(&unbound, true).await,
        ];
        for answer in answers {
            assert!(matches!(answer, Some(Response::Refused(_))), "{answer:?}");
        }
        assert!(farm.get(key).await.is_none(), "nothing stored under the victim's key");
    }

    /// The worker keys a unit from the files it holds, not from what a client says: a file not
    /// stored yet gives no key, a time macro makes the unit uncacheable, and the key is the one
    /// the wrapper computes from the same unit.
    #[test]
    fn a_worker_keys_a_unit_from_the_files_it_holds() {
        use discomy_protocol::sources::FarmKeyFacts;
        use discomy_protocol::{CompilerId, Language, OutputKind, SourceFile};
        let dir = tempfile::tempdir().expect("tempdir");
        let farm = FarmStore::open(&dir.path().join("tools"));
        let sources = SourceStore::open(&dir.path().join("sources"), 1 << 20).expect("store");
        let unit_of = |text: &[u8]| SourceCompileRequest {
            compiler: CompilerId { name: "gcc".into(), identity: Digest([1; 32]) },
            language: Language::C,
            output: OutputKind::Object,
            args: vec!["-c".into(), "a.c".into()],
            cwd: "/b".into(),
            source_name: "a.c".into(),
            files: vec![SourceFile {
                path: "/b/a.c".into(),
                digest: Digest(*blake3::hash(text).as_bytes()),
                size: text.len() as u64,
            }],
            source_date_epoch: None,
            deps: None,
        };
        let plain = unit_of(b"int x;");
        assert_eq!(farm.unit_key(&plain, &sources), Err(plain.files[0].digest));
        sources.put(&Payload::compress(b"int x;")).expect("stored");
        let wrapper_side =
            plain
                .farm_key(plain.farm_key_facts(
                    FarmKeyFacts::NONE.and(FarmKeyFacts::of_file(b"int x;", "/b")),
                ));
        assert_eq!(farm.unit_key(&plain, &sources), Ok(Some(wrapper_side)));
        // Remembered: the same answer without the file.
        assert_eq!(farm.unit_key(&plain, &sources), Ok(Some(wrapper_side)));
        let timed = unit_of(b"const char *d = __DATE__;");
        sources.put(&Payload::compress(b"const char *d = __DATE__;")).expect("stored");
        assert_eq!(farm.unit_key(&timed, &sources), Ok(None));
    }
}
