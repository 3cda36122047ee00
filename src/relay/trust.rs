//! The center's key as the relay trusts it, and the check of mirrored records against it.
//!
//! A record's own hash (`SHA-256(prev_hash ‖ header ‖ payload)`) can be computed by anyone:
//! on its own it proves nothing about where a record came from. So the relay mirrors a record
//! only with the center's **signed head at its position**: the Ed25519 signature of
//! `"license-ledger/head/v1" ‖ position (u64 BE) ‖ hash` (the `/v1/audit/head` form,
//! [`ledger_events::answer::head_message`]) under the center's key. The mirror's own check
//! then ties the record's contents to that hash. A record without a valid signature is never
//! mirrored, applied to the view, or answered from.
//!
//! The key is pinned at first contact (`GET /v1/keys`, or the central key of a relay
//! certificate saved before this file existed) in `<data_dir>/center-key.json`, mode 0600.
//! From then on a page signed by another key is refused: when the center's key was replaced
//! on purpose, the operator removes the file (or writes the new key in it).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use ledger_events::answer::{key_id_for, verify_head, VerifyingKey};
use ledger_events::Record;
use serde::{Deserialize, Serialize};

use super::RelayError;

/// The pinned key's file in the relay's data directory.
pub const CENTER_KEY_FILE: &str = "center-key.json";

/// The center's answer and head key, as pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CenterKey {
    key: VerifyingKey,
    key_id: String,
}

#[derive(Serialize, Deserialize)]
struct CenterKeyFile {
    key_id: String,
    public_key: String,
}

impl CenterKey {
    /// The key from its 64 hex digits.
    pub fn from_hex(public_key: &str) -> Result<CenterKey, String> {
        let key = hex::decode(public_key.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| format!("{public_key:?} is not an Ed25519 public key in hex"))?;
        Ok(CenterKey {
            key_id: key_id_for(&key),
            key,
        })
    }

    /// The key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Its id (as `/v1/keys` gives it).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Its 64 lower-case hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Reads the pinned key in `dir`, if there is one.
    pub fn load(dir: &Path) -> Result<Option<CenterKey>, RelayError> {
        let path = dir.join(CENTER_KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RelayError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        let file: CenterKeyFile = serde_json::from_str(&text).map_err(|e| {
            RelayError::Corrupt(format!(
                "{}: {e}; write the center's key as {{\"key_id\": ..., \"public_key\": ...}} \
                 (GET /v1/keys at the center) or remove the file to pin it again",
                path.display()
            ))
        })?;
        let key = CenterKey::from_hex(&file.public_key)
            .map_err(|e| RelayError::Corrupt(format!("{}: {e}", path.display())))?;
        Ok(Some(key))
    }

    /// Pins this key in `dir` (a new file, mode 0600, written whole).
    pub fn pin(&self, dir: &Path) -> Result<(), RelayError> {
        let path = dir.join(CENTER_KEY_FILE);
        // A temporary name of this call's own: the refresh and the live pull may both pin at
        // first contact, and a shared name let one rename the other's file away.
        static PINS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!("{CENTER_KEY_FILE}.{n}.tmp"));
        let text = serde_json::to_string_pretty(&CenterKeyFile {
            key_id: self.key_id.clone(),
            public_key: self.hex(),
        })
        .map_err(|e| RelayError::Corrupt(e.to_string()))?;
        let io = |what: &str, p: &Path| {
            let context = format!("{what} {}", p.display());
            move |source| RelayError::Io { context, source }
        };
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming to", &path))?;
        Ok(())
    }

    /// Checks a feed page: signed by this key (`key_id`), one signature per record, each the
    /// signed head at the record's position and hash. The first failure is the error.
    pub fn verify_page(
        &self,
        records: &[Record],
        signatures: &[String],
        key_id: &str,
    ) -> Result<(), String> {
        if key_id != self.key_id {
            return Err(format!(
                "the center signed with key {key_id}, but the relay pinned {} at first \
                 contact ({CENTER_KEY_FILE}); if the center's key was replaced on purpose, \
                 remove that file and restart the relay",
                self.key_id
            ));
        }
        if records.len() != signatures.len() {
            return Err(format!(
                "{} records came with {} signed heads",
                records.len(),
                signatures.len()
            ));
        }
        for (record, signature) in records.iter().zip(signatures) {
            let (position, hash) = (record.envelope.position, record.envelope.hash);
            verify_head(&self.key, position, &hash, signature).map_err(|e| {
                format!(
                    "the center's signed head at position {position} does not match the \
                     record's hash {hash}: {e}"
                )
            })?;
        }
        Ok(())
    }
}
