//! Tests of the toolchain store.

use super::*;
use discomy_protocol::TreeEntry;

fn manifest(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> ToolchainManifest {
    let mut entries: Vec<TreeEntry> = files
        .iter()
        .map(|(p, data)| TreeEntry {
            path: (*p).into(),
            kind: EntryKind::File {
                digest: Digest::of(data),
                size: data.len() as u64,
                executable: true,
            },
        })
        .chain(links.iter().map(|(p, t)| TreeEntry {
            path: (*p).into(),
            kind: EntryKind::Symlink { target: (*t).into() },
        }))
        .collect();
    entries.sort();
    ToolchainManifest { name: "test".into(), driver: files[0].0.into(), entries }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_needs_blobs_then_builds_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = ToolStore::open(dir.path(), 1 << 30, true).unwrap();
    let m = manifest(
        &[("/usr/bin/cc", b"driver"), ("/usr/lib/cc1", b"cc1")],
        &[("/usr/bin/gcc", "cc")],
    );
    let InstallStep::Missing(missing) = store.install(&m).await.unwrap() else { panic!() };
    assert_eq!(missing.len(), 2);
    for data in [&b"driver"[..], b"cc1"] {
        store.put_blob(&Payload::compress(data)).unwrap();
    }
    assert_eq!(store.install(&m).await.unwrap(), InstallStep::Ready);
    let lease = store.lease(&m.digest()).unwrap();
    assert_eq!(fs::read(lease.root.join("usr/lib/cc1")).unwrap(), b"cc1");
    assert_eq!(fs::read_link(lease.root.join("usr/bin/gcc")).unwrap(), PathBuf::from("cc"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_installs_make_one_uploader() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ToolStore::open(dir.path(), 1 << 30, true).unwrap());
    let m = manifest(&[("/bin/x", b"x")], &[]);
    assert!(matches!(store.install(&m).await.unwrap(), InstallStep::Missing(_)));
    let (s2, m2) = (store.clone(), m.clone());
    let waiter = tokio::spawn(async move { s2.install(&m2).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "second installer must wait for the first upload");
    store.put_blob(&Payload::compress(b"x")).unwrap();
    assert_eq!(store.install(&m).await.unwrap(), InstallStep::Ready);
    assert_eq!(waiter.await.unwrap().unwrap(), InstallStep::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_manifests_cannot_write_outside_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let store = ToolStore::open(dir.path(), 1 << 30, true).unwrap();
    // A symlink to a host directory, then a file "inside" it.
    let link_target = outside.path().to_string_lossy().into_owned();
    let m = manifest(&[("/a/evil", b"pwned"), ("/usr/bin/cc", b"d")], &[("/a", &link_target)]);
    assert!(m.validate().is_ok());
    for data in [&b"pwned"[..], b"d"] {
        store.put_blob(&Payload::compress(data)).unwrap();
    }
    assert!(store.install(&m).await.is_err());
    assert!(!outside.path().join("evil").exists());
    // Tampered blobs are refused at the door.
    let mut bad = Payload::compress(b"abc");
    bad.digest = Digest::of(b"abd");
    assert!(store.put_blob(&bad).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_eviction_keeps_the_bound_and_spares_leased_trees() {
    let dir = tempfile::tempdir().unwrap();
    // Each toolchain costs 2000 bytes: its blob and its tree copy.
    let store = ToolStore::open(dir.path(), 4500, true).unwrap();
    let big = |c: u8| vec![c; 1000];
    let (a, b, c) = (big(b'a'), big(b'b'), big(b'c'));
    let ma = manifest(&[("/bin/a", &a)], &[]);
    let mb = manifest(&[("/bin/b", &b)], &[]);
    let mc = manifest(&[("/bin/c", &c)], &[]);
    for (m, data) in [(&ma, &a), (&mb, &b)] {
        store.put_blob(&Payload::compress(data)).unwrap();
        let _ = store.install(m).await.unwrap();
        assert_eq!(store.install(m).await.unwrap(), InstallStep::Ready);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease_a = store.lease(&ma.digest()).unwrap();
    store.put_blob(&Payload::compress(&c)).unwrap();
    let _ = store.install(&mc).await.unwrap();
    assert_eq!(store.install(&mc).await.unwrap(), InstallStep::Ready);
    assert!(store.size() <= 4500, "size {}", store.size());
    assert!(store.is_installed(&ma.digest()), "leased tree evicted");
    assert!(!store.is_installed(&mb.digest()), "least recently used should go");
    assert!(store.is_installed(&mc.digest()));
    drop(lease_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_counts_installs_and_blobs_received_again_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = ToolStore::open(dir.path(), 1 << 30, true).unwrap();
    let m = manifest(&[("/usr/bin/cc", b"driver")], &[]);
    let _ = store.install(&m).await.unwrap();
    store.put_blob(&Payload::compress(b"driver")).unwrap();
    store.put_blob(&Payload::compress(b"driver")).unwrap();
    assert_eq!(store.install(&m).await.unwrap(), InstallStep::Ready);
    let a = store.activity();
    assert_eq!((a.installs, a.blobs_received, a.blobs_received_again), (1, 2, 1));
    assert_eq!(a.installed.len(), 1);
    assert_eq!(a.installed[0].digest, m.digest().to_hex());
    // What the benchmark reads instead of log lines: bytes, time and when.
    assert_eq!(a.installed[0].bytes, m.content_size());
    assert!(a.installed[0].at_unix_ms > 0);
    assert_eq!(a.blob_bytes_received, 2 * b"driver".len() as u64);
    store.note_pushed(&m.digest(), 7);
    let pushed = store.activity().pushed;
    assert_eq!((pushed.len(), pushed[0].ms), (1, 7));
    assert_eq!(pushed[0].digest, m.digest().to_hex());
    // A peer sending endless distinct blobs grows no list: the digests remembered are bounded.
    for i in 0..(MAX_SEEN_BLOBS + 10) {
        store.put_blob(&Payload::compress(&(i as u64).to_le_bytes())).unwrap();
    }
    assert!(store.lock().seen_blobs.len() <= MAX_SEEN_BLOBS);
    assert_eq!(store.activity().blobs_received, 2 + MAX_SEEN_BLOBS as u64 + 10);
}

/// Blobs uploaded but never installed do not fill the store: once over its bound, those no
/// toolchain uses (past their grace) go first, and installed toolchains' blobs stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_blobs_are_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        ToolStore::open(dir.path(), 1 << 20, true).unwrap().with_orphan_grace(Duration::ZERO);
    let m = manifest(&[("/usr/bin/cc", b"driver")], &[]);
    store.put_blob(&Payload::compress(b"driver")).unwrap();
    assert_eq!(store.install(&m).await.unwrap(), InstallStep::Ready);
    for i in 0..3u8 {
        let noise: Vec<u8> =
            (0..600u32 << 10).map(|j| (j.wrapping_mul(97) ^ u32::from(i)) as u8).collect();
        store.put_blob(&Payload::compress(&noise)).unwrap();
    }
    assert!(store.size() <= 1 << 20, "{} bytes kept", store.size());
    assert!(store.has_blob(&Digest::of(b"driver")), "an installed toolchain's blob went");
    assert!(store.lease(&m.digest()).is_some());
}
