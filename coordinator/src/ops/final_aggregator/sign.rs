//! Signing with the configured key (`rpmsign --addsign` for RPMs, `gpg --detach-sign --armor`
//! for `repomd.xml`) and checking signatures against a public key (a private GnuPG home for
//! detached signatures, a private rpm database for `rpmkeys --checksig`). Passphrases travel in
//! files (`--passphrase-file`), never on a command line; temporary homes live in temporary
//! directories and their gpg-agent is stopped when they go.

use std::path::{Path, PathBuf};

use super::cmd::Cmd;
use super::{AggregatorError, SigningConfig};

/// Whether `s` can go into an rpm macro body unquoted: no `%`, quotes, backslashes, whitespace
/// or control characters.
fn macro_safe(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && !"%\"'\\`$".contains(c))
}

/// Whether `key_id` is a plausible key name: a fingerprint, key id, e-mail or user id without
/// `%` or control characters.
fn key_id_ok(key_id: &str) -> bool {
    !key_id.is_empty()
        && key_id.len() <= 200
        && !key_id.starts_with('-')
        && key_id.chars().all(|c| (c.is_ascii_graphic() || c == ' ') && c != '%')
}

/// A GnuPG home with the secret key: the configured one, or a temporary one.
pub struct Signer {
    home: PathBuf,
    key_id: String,
    passphrase_file: Option<PathBuf>,
    _temp: Option<TempHome>,
}

impl Signer {
    /// Prepares signing with `config` (imports `key_file` into a temporary home).
    pub fn new(config: &SigningConfig) -> Result<Signer, AggregatorError> {
        if !key_id_ok(&config.key_id) {
            return Err(AggregatorError::Refused(format!("signing key_id {:?}", config.key_id)));
        }
        if let Some(p) = &config.passphrase_file {
            if !p.to_str().is_some_and(macro_safe) {
                return Err(AggregatorError::Refused(format!(
                    "passphrase_file {} (whitespace, quotes and % are not allowed in its path)",
                    p.display()
                )));
            }
        }
        let (home, temp) = match (&config.gnupg_home, &config.key_file) {
            (Some(home), None) => (home.clone(), None),
            (None, Some(key_file)) => {
                let temp = TempHome::new()?;
                let mut cmd = gpg(temp.path())?.arg("--import");
                if let Some(p) = &config.passphrase_file {
                    cmd = cmd.args(["--pinentry-mode", "loopback", "--passphrase-file"]).arg(p);
                }
                cmd.arg(key_file).run()?;
                (temp.path().to_path_buf(), Some(temp))
            }
            _ => {
                return Err(AggregatorError::Refused(
                    "signing needs exactly one of gnupg_home and key_file".into(),
                ));
            }
        };
        if !home.to_str().is_some_and(macro_safe) {
            return Err(AggregatorError::Refused(format!("gnupg_home {}", home.display())));
        }
        Ok(Signer {
            home,
            key_id: config.key_id.clone(),
            passphrase_file: config.passphrase_file.clone(),
            _temp: temp,
        })
    }

    fn passphrase_args(&self) -> Vec<String> {
        match &self.passphrase_file {
            Some(p) => vec![
                "--pinentry-mode".into(),
                "loopback".into(),
                "--passphrase-file".into(),
                p.to_string_lossy().into_owned(),
            ],
            None => Vec::new(),
        }
    }

    /// Signs RPMs in place (`rpmsign --addsign`), a few at a time.
    pub fn sign_rpms(&self, files: &[PathBuf]) -> Result<(), AggregatorError> {
        let extra = std::iter::once("--batch".to_string())
            .chain(self.passphrase_args())
            .collect::<Vec<_>>();
        // Debian's rpm names `gpg2`, which Debian does not ship: name the gpg found here.
        let gpg_path = super::cmd::find_tool("gpg")?;
        if !gpg_path.to_str().is_some_and(macro_safe) {
            return Err(AggregatorError::Refused(format!("gpg at {}", gpg_path.display())));
        }
        for chunk in files.chunks(50) {
            Cmd::new("rpmsign")?
                .env("GNUPGHOME", &self.home)
                .arg("--define")
                .arg(format!("__gpg {}", gpg_path.display()))
                .arg("--define")
                .arg(format!("_gpg_name {}", self.key_id))
                .arg("--define")
                .arg(format!("_gpg_path {}", self.home.display()))
                .arg("--define")
                .arg(format!("_gpg_sign_cmd_extra_args {}", extra.join(" ")))
                .arg("--addsign")
                .args(chunk)
                .run()?;
        }
        Ok(())
    }

    /// Writes an armored detached signature of `file` to `out`.
    pub fn detach_sign(&self, file: &Path, out: &Path) -> Result<(), AggregatorError> {
        gpg(&self.home)?
            .args(self.passphrase_args())
            .arg("--local-user")
            .arg(&self.key_id)
            .args(["--detach-sign", "--armor", "--output"])
            .arg(out)
            .arg("--")
            .arg(file)
            .run()
            .map(drop)
    }

    /// The key's public half, armored.
    pub fn public_key(&self) -> Result<String, AggregatorError> {
        let out = gpg(&self.home)?.args(["--armor", "--export", "--"]).arg(&self.key_id).run()?;
        if !out.stdout.contains("BEGIN PGP PUBLIC KEY BLOCK") {
            return Err(AggregatorError::Refused(format!(
                "gpg has no public key for {:?}",
                self.key_id
            )));
        }
        Ok(out.stdout)
    }
}

/// `gpg --batch --homedir HOME`.
fn gpg(home: &Path) -> Result<Cmd, AggregatorError> {
    Ok(Cmd::new("gpg")?.args(["--batch", "--no-tty", "--quiet", "--homedir"]).arg(home))
}

/// A temporary GnuPG home (mode 0700) whose agent is stopped when it is dropped.
struct TempHome(tempfile::TempDir);

impl TempHome {
    fn new() -> Result<TempHome, AggregatorError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("discomy-gpg-")
            .tempdir()
            .map_err(AggregatorError::io(std::env::temp_dir()))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(AggregatorError::io(dir.path()))?;
        Ok(TempHome(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        if let Ok(cmd) = Cmd::new("gpgconf") {
            let _ = cmd.arg("--homedir").arg(self.path()).args(["--kill", "gpg-agent"]).output();
        }
    }
}

/// What `rpmkeys --checksig` says of an RPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpmSignature {
    /// Signed by the key, digests fine.
    Good,
    /// No signature at all.
    Unsigned,
    /// A signature that does not verify with the key, or broken digests (rpm's words).
    Bad(String),
}

/// Checks signatures against one public key.
pub struct Checker {
    home: TempHome,
    dbpath: tempfile::TempDir,
}

impl Checker {
    /// Imports the armored `public_key` into a private GnuPG home and a private rpm database.
    pub fn new(public_key: &Path) -> Result<Checker, AggregatorError> {
        let home = TempHome::new()?;
        gpg(home.path())?.arg("--import").arg(public_key).run()?;
        let dbpath = tempfile::Builder::new()
            .prefix("discomy-rpmdb-")
            .tempdir()
            .map_err(AggregatorError::io(std::env::temp_dir()))?;
        Cmd::new("rpmkeys")?
            .arg("--dbpath")
            .arg(dbpath.path())
            .arg("--import")
            .arg(public_key)
            .run()?;
        Ok(Checker { home, dbpath })
    }

    /// Whether `sig` is a good signature of `file` by the key.
    pub fn detached_ok(&self, sig: &Path, file: &Path) -> Result<bool, AggregatorError> {
        let out = gpg(self.home.path())?
            .args(["--status-fd", "1", "--verify", "--"])
            .arg(sig)
            .arg(file)
            .output()?;
        Ok(out.success && out.stdout.lines().any(|l| l.starts_with("[GNUPG:] VALIDSIG ")))
    }

    /// Checks one RPM's signatures and digests.
    pub fn rpm(&self, file: &Path) -> Result<RpmSignature, AggregatorError> {
        let out = Cmd::new("rpmkeys")?
            .arg("--dbpath")
            .arg(self.dbpath.path())
            .args(["--checksig", "--verbose", "--"])
            .arg(file)
            .output()?;
        let text = format!("{}{}", out.stdout, out.stderr);
        let signatures: Vec<&str> =
            text.lines().filter(|l| l.contains("Signature")).map(str::trim).collect();
        if !out.success {
            let why =
                text.lines().filter(|l| !l.ends_with(": OK") && !l.ends_with(':')).map(str::trim);
            return Ok(RpmSignature::Bad(why.collect::<Vec<_>>().join("; ")));
        }
        if signatures.is_empty() {
            return Ok(RpmSignature::Unsigned);
        }
        Ok(RpmSignature::Good)
    }
}
