//! Account, certificates and renewal state on disk, under `acme.storage`:
//!
//! ```text
//! <storage>/<ca>/account.json                    account URL and key (0600)
//! <storage>/<ca>/certificates/<id>/fullchain.pem leaf first (0600)
//! <storage>/<ca>/certificates/<id>/key.pem       (0600)
//! <storage>/<ca>/certificates/<id>/meta.json     dates, ARI window, failures, next attempt
//! <storage>/<ca>/certificates/<id>/lock          held while ordering
//! ```
//!
//! `<ca>` comes from the directory URL, so staging and production never mix.
//! Directories are 0700. Every file is written to a temporary name, synced
//! and renamed, so a crash leaves the old file or the new one, never half.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One CA's part of the storage.
#[derive(Clone, Debug)]
pub struct Storage {
    root: PathBuf,
}

/// What drowsy remembers about a certificate besides its files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The names the stored certificate was ordered for.
    #[serde(default)]
    pub names: Vec<String>,
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    pub issuer: Option<String>,
    /// When the next renewal is due (Unix seconds): the ARI pick when the
    /// CA gave a window, else the lifetime rule.
    pub renew_at: Option<u64>,
    /// The CA's suggested renewal window (RFC 9773), Unix seconds.
    pub ari_window: Option<(u64, u64)>,
    /// When to ask the CA for its renewal window again.
    pub ari_next_check: Option<u64>,
    /// Failures since the last success; drives the back-off.
    #[serde(default)]
    pub failures: u32,
    /// No order before this time (Unix seconds), even across restarts.
    pub next_attempt: Option<u64>,
    pub last_error: Option<LastError>,
    pub obtained_at: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// The ACME problem type (`connection`, `rateLimited`, ...) or drowsy's
    /// own kind (`network`, `propagation`, `dns-provider`, ...).
    pub kind: String,
    pub detail: String,
    pub hint: String,
    pub at: u64,
}

/// Files of a stored certificate, as read.
pub struct Stored {
    pub fullchain: PathBuf,
    pub key: PathBuf,
    pub meta: Meta,
}

/// Held while ordering one certificate; released on drop.
pub struct CertLock {
    _file: File,
}

impl Storage {
    /// Opens (creating with mode 0700) the storage of the CA at `directory`.
    pub fn open(base: &Path, directory: &str) -> io::Result<Storage> {
        let root = base.join(ca_dir_name(directory));
        create_private_dir(&root.join("certificates"))?;
        Ok(Storage { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn account_file(&self) -> PathBuf {
        self.root.join("account.json")
    }

    pub fn read_account(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.account_file()) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write_account(&self, json: &[u8]) -> io::Result<()> {
        write_atomic(&self.account_file(), json)
    }

    pub fn cert_dir(&self, id: &str) -> PathBuf {
        self.root.join("certificates").join(cert_dir_name(id))
    }

    /// The stored files of certificate `id` (they may not exist yet) and
    /// its meta (default when absent or unreadable: it is only state).
    pub fn load(&self, id: &str) -> Stored {
        let dir = self.cert_dir(id);
        let meta = fs::read(dir.join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Stored {
            fullchain: dir.join("fullchain.pem"),
            key: dir.join("key.pem"),
            meta,
        }
    }

    /// Stores a new certificate. The key goes first: a crash in between
    /// leaves a pair that does not match, which loads as "no certificate"
    /// and is ordered again, never a wrong key served.
    pub fn save_cert(&self, id: &str, fullchain: &str, key: &str, meta: &Meta) -> io::Result<()> {
        let dir = self.cert_dir(id);
        create_private_dir(&dir)?;
        write_atomic(&dir.join("key.pem"), key.as_bytes())?;
        write_atomic(&dir.join("fullchain.pem"), fullchain.as_bytes())?;
        self.save_meta(id, meta)
    }

    pub fn save_meta(&self, id: &str, meta: &Meta) -> io::Result<()> {
        let dir = self.cert_dir(id);
        create_private_dir(&dir)?;
        let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        write_atomic(&dir.join("meta.json"), &json)
    }

    /// Takes the lock of certificate `id` without waiting: `None` when
    /// another process (or task) is ordering it right now. An advisory
    /// `flock`, so a crashed holder never leaves it stuck.
    pub fn try_lock(&self, id: &str) -> io::Result<Option<CertLock>> {
        let dir = self.cert_dir(id);
        create_private_dir(&dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(CertLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

/// `https://acme-v02.api.letsencrypt.org/directory` →
/// `acme-v02.api.letsencrypt.org-directory`; `https://127.0.0.1:14000/dir`
/// → `127.0.0.1_14000-dir`.
pub fn ca_dir_name(directory: &str) -> String {
    let rest = directory
        .split_once("://")
        .map_or(directory, |(_, r)| r)
        .trim_end_matches('/');
    let mut out: String = rest
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c.to_ascii_lowercase(),
            ':' => '_',
            _ => '-',
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

/// Certificate ids are validated host names; only the wildcard star needs
/// replacing (`*.example.com` → `_.example.com`).
pub fn cert_dir_name(id: &str) -> String {
    id.replace('*', "_")
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `data` to `path` with mode 0600: a temporary file in the same
/// directory, fsync, rename over the old one, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        // An older file with a wider mode would keep it across truncation.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn directory_names_are_stable_and_safe() {
        assert_eq!(
            ca_dir_name("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org-directory"
        );
        assert_eq!(
            ca_dir_name("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000-dir"
        );
        assert_eq!(ca_dir_name("https://x/../../etc"), "x-..-..-etc");
        assert_eq!(cert_dir_name("*.example.com"), "_.example.com");
    }

    #[test]
    fn files_are_private_and_replaced_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Storage::open(tmp.path(), "https://ca.test/dir").unwrap();
        assert_eq!(mode(s.root()), 0o700);
        assert_eq!(mode(&s.root().join("certificates")), 0o700);
        let meta = Meta {
            names: vec!["a.test".into()],
            failures: 2,
            next_attempt: Some(42),
            ..Meta::default()
        };
        s.save_cert("a.test", "CERT", "KEY", &meta).unwrap();
        let dir = s.cert_dir("a.test");
        assert_eq!(mode(&dir), 0o700);
        for f in ["key.pem", "fullchain.pem", "meta.json"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(s.load("a.test").meta, meta);
        s.save_cert("a.test", "CERT2", "KEY2", &Meta::default())
            .unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("fullchain.pem")).unwrap(),
            "CERT2"
        );
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn the_lock_is_exclusive_until_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Storage::open(tmp.path(), "https://ca.test/dir").unwrap();
        let held = s.try_lock("a.test").unwrap();
        assert!(held.is_some());
        // A second open file description, as another process would have.
        assert!(s.try_lock("a.test").unwrap().is_none());
        assert!(s.try_lock("b.test").unwrap().is_some());
        drop(held);
        assert!(s.try_lock("a.test").unwrap().is_some());
    }
}
