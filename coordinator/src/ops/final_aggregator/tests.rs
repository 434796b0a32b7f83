//! The aggregator against the real tools: tiny noarch RPMs built with the host's `rpmbuild`, a
//! fresh GPG key, `createrepo_c`, `rpmsign`, `rpmkeys`, and `dnf` installing from the published
//! repository into an empty root with `gpgcheck=1 repo_gpgcheck=1`, no network. A missing tool
//! fails the test under CI (`CI` set) and skips it, saying so, elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const TOOLS: &[&str] = &["rpmbuild", "rpmsign", "rpmkeys", "gpg", "gpgconf", "createrepo_c"];

/// Whether every tool is installed; panics under CI when one is not.
#[allow(clippy::print_stderr)]
fn have(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| cmd::find_tool(t).is_err()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "missing tools under CI: {missing:?} (scripts/setup-debian.sh)"
    );
    eprintln!("skipping: {missing:?} not installed (scripts/setup-debian.sh installs them)");
    false
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary world: a GnuPG home with a fresh key, a blob store, a repos root.
struct World {
    dir: tempfile::TempDir,
    config: RepoConfig,
    public_key: PathBuf,
    n: u64,
}

impl World {
    fn new() -> World {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("gnupg");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let gpg = || {
            let mut c = Command::new("gpg");
            c.args(["--batch", "--no-tty", "--homedir"]).arg(&home);
            c
        };
        run(gpg()
            .args(["--passphrase", "", "--quick-gen-key", "Discomy Test <test@discomy.invalid>"])
            .args(["rsa2048", "sign", "never"]));
        let colons = run(gpg().args(["--with-colons", "--list-secret-keys"]));
        let fpr = colons
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .unwrap()
            .trim_matches(':')
            .to_string();
        let public_key = dir.path().join("pub.asc");
        run(gpg().args(["--armor", "--output"]).arg(&public_key).args(["--export", &fpr]));
        let config = RepoConfig {
            repos_root: dir.path().join("repos"),
            keep_generations: 2,
            signing: SigningConfig {
                gnupg_home: Some(home),
                key_file: None,
                key_id: fpr,
                passphrase_file: None,
            },
        };
        World { dir, config, public_key, n: 0 }
    }

    /// Builds `NAME-VERSION-1.noarch.rpm` (installing `/usr/share/NAME/hello.txt`) and its source
    /// RPM, and stores them as blobs.
    fn build(&mut self, name: &str, version: &str) -> Vec<Artefact> {
        let top = self.dir.path().join(format!("top-{name}-{version}"));
        std::fs::create_dir_all(&top).unwrap();
        let spec = top.join(format!("{name}.spec"));
        std::fs::write(
            &spec,
            format!(
                "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: test\nLicense: MIT\nBuildArch: noarch\n\
                 AutoReqProv: no\n%description\ntest\n%install\nmkdir -p %{{buildroot}}/usr/share/{name}\n\
                 echo {name}-{version} > %{{buildroot}}/usr/share/{name}/hello.txt\n%files\n/usr/share/{name}/hello.txt\n"
            ),
        )
        .unwrap();
        run(Command::new("rpmbuild")
            .args(["-ba", "--quiet", "--define"])
            .arg(format!("_topdir {}", top.display()))
            .arg(&spec));
        let mut out = Vec::new();
        for rpm in [
            top.join(format!("RPMS/noarch/{name}-{version}-1.noarch.rpm")),
            top.join(format!("SRPMS/{name}-{version}-1.src.rpm")),
        ] {
            out.push(self.blob(&rpm));
        }
        out.push(self.blob_named("build.log", b"a log is never published"));
        out
    }

    fn blob(&mut self, file: &Path) -> Artefact {
        let data = std::fs::read(file).unwrap();
        self.blob_named(file.file_name().unwrap().to_str().unwrap(), &data)
    }

    fn blob_named(&mut self, name: &str, data: &[u8]) -> Artefact {
        let hex = blake3::hash(data).to_hex().to_string();
        let path = self.dir.path().join("blobs").join(&hex[..2]).join(&hex);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        self.n += 1;
        Artefact {
            name: name.into(),
            blob_path: path,
            blake3: hex,
            size: data.len() as u64,
            job: self.n,
        }
    }

    fn link(&self) -> PathBuf {
        self.config.repos_root.join("el9-noarch")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(home) = &self.config.signing.gnupg_home {
            let _ = Command::new("gpgconf")
                .arg("--homedir")
                .arg(home)
                .args(["--kill", "gpg-agent"])
                .output();
        }
    }
}

#[test]
fn dnf_installs_from_a_published_signed_repository() {
    if !have(TOOLS) || !have(&["dnf"]) {
        return;
    }
    let mut w = World::new();
    let artefacts = [w.build("discomy-hello", "1.0"), w.build("discomy-other", "2.0")].concat();
    let published = publish(&w.config, "el9-noarch", "batch-1", &artefacts).unwrap();
    assert_eq!(published.generation, 1);
    assert_eq!(published.added.len(), 4, "{:?}", published.added);
    assert!(!published.path.join("Packages/build.log").exists());
    let out = dnf_install(&w, &w.public_key, "good", "discomy-hello");
    assert!(
        out.status.success(),
        "dnf: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let installed =
        std::fs::read_to_string(w.dir.path().join("root-good/usr/share/discomy-hello/hello.txt"))
            .unwrap();
    assert_eq!(installed.trim(), "discomy-hello-1.0");
    assert!(!w.dir.path().join("root-good/usr/share/discomy-other").exists());
    // With another key, dnf refuses the repository: the signatures are really checked.
    let stranger = World::new();
    let out = dnf_install(&w, &stranger.public_key, "stranger", "discomy-other");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("GPG signature"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!w.dir.path().join("root-stranger/usr/share/discomy-other").exists());
}

/// `dnf install PACKAGE` into the empty root `root-TAG` from the published repository only,
/// `gpgcheck=1 repo_gpgcheck=1` with `key`, no network, no configuration of the host's.
fn dnf_install(w: &World, key: &Path, tag: &str, package: &str) -> std::process::Output {
    let dir = w.dir.path().join(format!("dnf-{tag}"));
    let repos = dir.join("repos.d");
    std::fs::create_dir_all(&repos).unwrap();
    std::fs::create_dir_all(dir.join("log")).unwrap();
    std::fs::write(
        repos.join("discomy.repo"),
        format!(
            "[discomy]\nname=discomy\nbaseurl=file://{}\nenabled=1\ngpgcheck=1\nrepo_gpgcheck=1\ngpgkey=file://{}\nmetadata_expire=0\n",
            w.link().display(),
            key.display()
        ),
    )
    .unwrap();
    let conf = dir.join("dnf.conf");
    std::fs::write(&conf, "[main]\ngpgcheck=1\nrepo_gpgcheck=1\ninstall_weak_deps=False\n")
        .unwrap();
    Command::new("dnf")
        .args([
            "-y",
            "--quiet",
            "--noplugins",
            "--nodocs",
            "--releasever=9",
            "--disablerepo=*",
            "--enablerepo=discomy",
        ])
        .arg(format!("--config={}", conf.display()))
        .arg(format!("--installroot={}", w.dir.path().join(format!("root-{tag}")).display()))
        .arg(format!("--setopt=reposdir={}", repos.display()))
        .arg(format!("--setopt=cachedir={}", dir.join("cache").display()))
        .arg(format!("--setopt=logdir={}", dir.join("log").display()))
        .args(["--setopt=install_weak_deps=False", "install", package])
        .output()
        .unwrap()
}

#[test]
fn a_second_batch_keeps_the_first_and_switches_in_one_rename() {
    if !have(TOOLS) {
        return;
    }
    let mut w = World::new();
    let first = w.build("discomy-hello", "1.0");
    let p1 = publish(&w.config, "el9-noarch", "batch-1", &first).unwrap();
    assert_eq!(std::fs::read_link(w.link()).unwrap(), PathBuf::from("el9-noarch.d/000001"));
    // A reader that resolved the link before the switch.
    let held = std::fs::canonicalize(w.link()).unwrap();
    let second = w.build("discomy-hello", "1.1");
    let p2 = publish(&w.config, "el9-noarch", "batch-2", &second).unwrap();
    assert_eq!(p2.generation, 2);
    assert_eq!(std::fs::read_link(w.link()).unwrap(), PathBuf::from("el9-noarch.d/000002"));
    // The old generation is intact and still verifies; the new one has both builds.
    assert!(verify(&held, &w.public_key).unwrap().is_ok());
    let m = Manifest::read(&p2.path).unwrap();
    for (path, batch) in [
        ("Packages/discomy-hello-1.0-1.noarch.rpm", "batch-1"),
        ("Packages/discomy-hello-1.1-1.noarch.rpm", "batch-2"),
        ("SRPMS/discomy-hello-1.0-1.src.rpm", "batch-1"),
    ] {
        assert_eq!(m.entry(path).unwrap().batch, batch, "{path}");
    }
    assert_eq!(p2.files, m.files.len());
    assert!(verify(&w.link(), &w.public_key).unwrap().is_ok());
    // No temporary directory or link is left; old generations beyond keep_generations go.
    for batch in ["batch-3", "batch-4"] {
        let more = w.build("discomy-hello", &format!("1.{}", &batch[6..]));
        publish(&w.config, "el9-noarch", batch, &more).unwrap();
    }
    let mut left: Vec<String> = std::fs::read_dir(w.config.repos_root.join("el9-noarch.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["000002", "000003", "000004"]);
    assert!(!p1.path.exists());
    let mut top: Vec<String> = std::fs::read_dir(&w.config.repos_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["el9-noarch", "el9-noarch.d", "el9-noarch.lock"]);
}

#[test]
fn verify_names_changed_missing_unexpected_and_unsigned_files() {
    if !have(TOOLS) {
        return;
    }
    let mut w = World::new();
    let artefacts = [w.build("discomy-hello", "1.0"), w.build("discomy-other", "2.0")].concat();
    let p = publish(&w.config, "el9-noarch", "batch-1", &artefacts).unwrap();
    let result = verify(&w.link(), &w.public_key);
    let report = result.as_ref().unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.signatures_checked, 4);
    // Its result is recorded beside the repository, for the web UI.
    let recorded = record_verify(&w.link(), &result, "test").unwrap();
    assert_eq!(recorded, Some(w.config.repos_root.join("el9-noarch.verify.json")));
    let last = || read_record(&w.config.repos_root, "el9-noarch").unwrap().unwrap();
    assert_eq!((last().verdict, last().signatures_checked), (Verdict::Ok, 4));
    let gen_dir = &p.path;
    // Corrupt one RPM, delete another, add a stranger.
    let corrupt = "Packages/discomy-hello-1.0-1.noarch.rpm";
    let mut data = std::fs::read(gen_dir.join(corrupt)).unwrap();
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(gen_dir.join(corrupt), &data).unwrap();
    let deleted = "Packages/discomy-other-2.0-1.noarch.rpm";
    std::fs::remove_file(gen_dir.join(deleted)).unwrap();
    std::fs::write(gen_dir.join("Packages/stranger.rpm"), b"x").unwrap();
    let report = verify(&w.link(), &w.public_key).unwrap();
    assert_eq!(report.paths(ProblemKind::Changed), [corrupt], "{report}");
    assert_eq!(report.paths(ProblemKind::Missing), [deleted], "{report}");
    assert_eq!(report.paths(ProblemKind::Unexpected), ["Packages/stranger.rpm"], "{report}");
    record_verify(&p.path, &Ok(report), "test").unwrap();
    assert_eq!(
        (last().verdict, last().problem_count, last().by.as_str()),
        (Verdict::Failed, 3, "test")
    );
    // An RPM whose signature was removed (and whose manifest entry was made to match): unsigned.
    let unsigned = "SRPMS/discomy-other-2.0-1.src.rpm";
    run(Command::new("rpmsign").arg("--delsign").arg(gen_dir.join(unsigned)));
    let mut m = Manifest::read(gen_dir).unwrap();
    let (sha256, size) = manifest::sha256_file(&gen_dir.join(unsigned)).unwrap();
    let e = m.files.iter_mut().find(|e| e.path == unsigned).unwrap();
    (e.sha256, e.size) = (sha256, size);
    std::fs::remove_file(gen_dir.join(MANIFEST_NAME)).unwrap();
    m.write(gen_dir).unwrap();
    let report = verify(&w.link(), &w.public_key).unwrap();
    assert_eq!(report.paths(ProblemKind::Unsigned), [unsigned], "{report}");
    assert_eq!(report.paths(ProblemKind::Changed), [corrupt], "{report}");
    // The typed report serialises for a CLI's --json.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["problems"][0]["kind"], "missing");
    // Signed metadata tampered with: repomd.xml's signature fails.
    let repomd = gen_dir.join("repodata/repomd.xml");
    let text = std::fs::read_to_string(&repomd).unwrap();
    std::fs::write(&repomd, text.replace("<revision>", "<revision>1")).unwrap();
    let report = verify(&w.link(), &w.public_key).unwrap();
    assert!(report.paths(ProblemKind::Changed).contains(&"repodata/repomd.xml"), "{report}");
    // Publishing on top of a damaged repository is refused rather than blessing the damage.
    let more = w.build("discomy-third", "1.0");
    assert!(matches!(
        publish(&w.config, "el9-noarch", "batch-2", &more),
        Err(AggregatorError::Damaged(_))
    ));
}

#[test]
fn sync_mirrors_to_a_directory_and_over_rsync() {
    if !have(TOOLS) {
        return;
    }
    let mut w = World::new();
    let artefacts = w.build("discomy-hello", "1.0");
    publish(&w.config, "el9-noarch", "batch-1", &artefacts).unwrap();
    let mirror = w.dir.path().join("mirror/el9-noarch");
    let r = sync(&w.link(), &SyncDest::parse(mirror.to_str().unwrap()), 2).unwrap();
    assert_eq!(std::fs::read_link(&mirror).unwrap(), PathBuf::from("el9-noarch.d/000001"));
    assert_eq!(r.generation, 1);
    let report = verify(&mirror, &w.public_key).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.files_checked + 1, r.files);
    // Again after a second batch: the mirror switches to its next generation.
    let more = w.build("discomy-hello", "1.1");
    publish(&w.config, "el9-noarch", "batch-2", &more).unwrap();
    sync(&w.link(), &SyncDest::Dir(mirror.clone()), 2).unwrap();
    assert_eq!(std::fs::read_link(&mirror).unwrap(), PathBuf::from("el9-noarch.d/000002"));
    assert!(verify(&mirror, &w.public_key).unwrap().is_ok());

    assert_eq!(
        SyncDest::parse("mirror.example:/srv/repo"),
        SyncDest::Rsync("mirror.example:/srv/repo".into())
    );
    assert_eq!(SyncDest::parse("rsync://m/repo"), SyncDest::Rsync("rsync://m/repo".into()));
    assert_eq!(SyncDest::parse("./a:b"), SyncDest::Dir("./a:b".into()));
    if !have(&["rsync"]) {
        return;
    }
    let target = w.dir.path().join("rsynced");
    sync(&w.link(), &SyncDest::Rsync(target.to_str().unwrap().into()), 2).unwrap();
    let report = verify(&target, &w.public_key).unwrap();
    assert!(report.is_ok(), "{report}");
}

#[test]
fn hostile_names_and_linked_blobs_are_refused() {
    if !have(TOOLS) {
        return;
    }
    let mut w = World::new();
    let good = w.build("discomy-hello", "1.0");
    let mut hostile = good[0].clone();
    hostile.name = "../x.rpm".into();
    let e = publish(&w.config, "el9-noarch", "b", &[hostile]).unwrap_err();
    assert!(matches!(e, AggregatorError::BadBlob { .. }), "{e}");
    // A symlinked blob.
    let mut linked = good[0].clone();
    let link = w.dir.path().join("link-blob");
    std::os::unix::fs::symlink(&good[0].blob_path, &link).unwrap();
    linked.blob_path = link;
    let e = publish(&w.config, "el9-noarch", "b", &[linked]).unwrap_err();
    assert!(matches!(e, AggregatorError::BadBlob { .. }), "{e}");
    // A blob that is not what it claims, and a repository name that leaves the root.
    let mut lying = good[0].clone();
    lying.blake3 = "0".repeat(64);
    assert!(matches!(
        publish(&w.config, "el9-noarch", "b", &[lying]),
        Err(AggregatorError::BadBlob { .. })
    ));
    assert!(matches!(publish(&w.config, "../etc", "b", &good), Err(AggregatorError::Refused(_))));
    // Nothing was published, and nothing was left behind.
    assert!(!w.link().exists());
    let leftovers: Vec<_> =
        std::fs::read_dir(w.config.repos_root.join("el9-noarch.d")).unwrap().collect();
    assert!(leftovers.is_empty());
    assert!(!w.dir.path().join("etc").exists());
}

#[test]
fn an_armored_key_file_with_a_passphrase_file_signs() {
    if !have(TOOLS) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut w = World::new();
    // A passphrase-protected key in a home of its own, exported armored; the world's key unused.
    let home = w.dir.path().join("gnupg-protected");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let gpg = || {
        let mut c = Command::new("gpg");
        c.args([
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "s3cret",
            "--homedir",
        ])
        .arg(&home);
        c
    };
    run(gpg().args([
        "--quick-gen-key",
        "Discomy Protected <p@discomy.invalid>",
        "rsa2048",
        "sign",
        "never",
    ]));
    let colons = run(gpg().args(["--with-colons", "--list-secret-keys"]));
    let fpr =
        colons.lines().find_map(|l| l.strip_prefix("fpr:")).unwrap().trim_matches(':').to_string();
    let key_file = w.dir.path().join("secret.asc");
    let public_key = w.dir.path().join("protected.pub.asc");
    run(gpg().args(["--armor", "--output"]).arg(&key_file).args(["--export-secret-keys", &fpr]));
    run(gpg().args(["--armor", "--output"]).arg(&public_key).args(["--export", &fpr]));
    let _ =
        Command::new("gpgconf").arg("--homedir").arg(&home).args(["--kill", "gpg-agent"]).output();
    let pass = w.dir.path().join("pass");
    std::fs::write(&pass, "s3cret\n").unwrap();
    let mut config = w.config.clone();
    config.signing = SigningConfig {
        gnupg_home: None,
        key_file: Some(key_file),
        key_id: fpr,
        passphrase_file: Some(pass),
    };
    let artefacts = w.build("discomy-hello", "1.0");
    publish(&config, "el9-noarch", "batch-1", &artefacts).unwrap();
    let report = verify(&w.link(), &public_key).unwrap();
    assert!(report.is_ok(), "{report}");
    // The world's own key did not sign it.
    let report = verify(&w.link(), &w.public_key).unwrap();
    assert_eq!(report.paths(ProblemKind::BadSignature).len(), 3, "{report}");
    // Configuration mistakes are refused before anything is written.
    config.signing.gnupg_home = Some(w.dir.path().join("gnupg"));
    assert!(matches!(
        publish(&config, "el9-noarch", "batch-2", &artefacts),
        Err(AggregatorError::Refused(_))
    ));
}
