//! Signed check-in answers: the server's Ed25519 key, kept in the data directory, and the
//! turning of a check-in decision into a [`SignedAnswer`] terminals verify offline.
//!
//! The key file holds the 32-byte seed in hex, is created on first start with mode 0600, and
//! is never logged or recorded. Its key id (the first 16 hex digits of SHA-256 of the public
//! key) travels with every answer, so keys can be rotated: terminals keep the public keys
//! they trust by id.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ledger_events::answer::{self, CheckInAnswer, SignedAnswer, SigningKey, VerifyingKey};

use crate::domain::checkin::{CheckInPlan, CheckInRequest};

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a 64-hex-digit seed.
    #[error("{path} does not hold a 64-hex-digit Ed25519 seed; restore it from backup or remove it to create a new key (terminals must then trust the new key id)")]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// The file is readable by others.
    #[error("{path} has mode {mode:o}; run `chmod 600 {path}`")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

/// The server's answer-signing key.
pub struct AnswerSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for AnswerSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnswerSigner({})", self.key_id)
    }
}

impl AnswerSigner {
    /// The key file's name inside the data directory.
    pub const FILE_NAME: &'static str = "answer-signing.key";

    /// A signer from a seed (tests, key rotation tools).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let key_id = answer::key_id_for(&key.verifying_key());
        Self { key, key_id }
    }

    /// Loads the key at `path`, creating it (mode 0600) from `seed_source` if absent.
    pub fn load_or_create(
        path: &Path,
        seed_source: impl FnOnce() -> Result<[u8; 32], std::io::Error>,
    ) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        match fs::read_to_string(path) {
            Ok(text) => {
                let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions {
                        path: path.to_owned(),
                        mode,
                    });
                }
                let mut seed = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| KeyError::Malformed {
                    path: path.to_owned(),
                })?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed = seed_source().map_err(io)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(hex::encode(seed).as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                tracing::info!(path = %path.display(), "created a new answer-signing key");
                Ok(Self::from_seed(seed))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key id terminals see.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key terminals verify with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Certifies a relay's key for `cnpj` until `valid_until` (see
    /// [`answer::RelayCertificate`]).
    pub fn certify_relay(
        &self,
        cnpj: ledger_events::Cnpj,
        relay_key: &VerifyingKey,
        valid_until: DateTime<Utc>,
    ) -> answer::RelayCertificate {
        answer::certify_relay(&self.key, cnpj, relay_key, valid_until)
    }

    /// Signs the log head at `position` with hash `hash` for auditors
    /// (see [`answer::head_message`]); 128 hex digits.
    pub fn sign_head(&self, position: u64, hash: &ledger_events::Hash) -> String {
        answer::sign_head(&self.key, position, hash)
    }

    /// Builds and signs the answer to `req` from its decision.
    pub fn sign(
        &self,
        req: &CheckInRequest,
        plan: &CheckInPlan,
        nonce: Option<String>,
        now: DateTime<Utc>,
    ) -> SignedAnswer {
        let answer = CheckInAnswer {
            version: answer::ANSWER_VERSION,
            cnpj: Some(req.cnpj),
            license_id: plan.license_id,
            hardware_id: req.hardware_id,
            hardware_key: req.hardware_key,
            product: req.product,
            outcome: plan.code,
            expires_on: plan.shown_expiry,
            days_left: plan.days_left,
            resources: plan.resources.clone(),
            messages: plan.messages.clone(),
            issued_at: now,
            nonce,
        };
        answer::sign(answer, &self.key, &self.key_id)
    }
}

/// A fresh random seed from the operating system.
pub fn random_seed() -> Result<[u8; 32], std::io::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_with_mode_0600_and_reloaded_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AnswerSigner::FILE_NAME);
        let a = AnswerSigner::load_or_create(&path, || Ok([7; 32])).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = AnswerSigner::load_or_create(&path, || Ok([9; 32])).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(a.verifying_key(), b.verifying_key());
    }

    #[test]
    fn a_key_readable_by_others_or_malformed_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AnswerSigner::FILE_NAME);
        AnswerSigner::load_or_create(&path, || Ok([7; 32])).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = AnswerSigner::load_or_create(&path, || Ok([7; 32])).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            AnswerSigner::load_or_create(&path, || Ok([7; 32])),
            Err(KeyError::Malformed { .. })
        ));
    }
}
