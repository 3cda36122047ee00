//! Bearer tokens: stored as SHA-256 digests with a role (and, for terminals, a CNPJ);
//! compared in constant time; never logged.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use ledger_events::{Actor, Cnpj};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::limits::{LimitKey, AUTH_FAILURES_PER_MINUTE};
use super::AppState;
use crate::config::{token_digest, Role, SecretsFile, TokenEntry, SECRETS_FILE_NAME};

/// How often, at most, the table looks at the secrets file for tokens created or revoked by
/// the CLI while the server runs.
const RELOAD_CHECK_MILLIS: u64 = 1000;

/// The tokens the server accepts. Tokens added through the API work at once; tokens created
/// or revoked in `secrets.toml` by the CLI take effect within about a second, because the
/// table re-reads the file when its modification time changes.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: RwLock<Vec<([u8; 32], TokenEntry)>>,
    /// The data directory whose `secrets.toml` is followed, if any.
    watched: Option<PathBuf>,
    /// Modification time of the file when last read.
    seen: Mutex<Option<SystemTime>>,
    /// When the file was last looked at, in milliseconds since the Unix epoch.
    checked_at: AtomicU64,
}

impl TokenTable {
    /// A table of `entries` (their `sha256` fields are 64 hex digits, checked on load).
    pub fn new(entries: &[TokenEntry]) -> Self {
        let table = Self::default();
        for e in entries {
            table.add(e.clone());
        }
        table
    }

    /// A table of `entries` that also follows `<data_dir>/secrets.toml`.
    pub fn watching(entries: &[TokenEntry], data_dir: &Path) -> Self {
        let mut table = Self::new(entries);
        let seen = fs::metadata(data_dir.join(SECRETS_FILE_NAME))
            .and_then(|m| m.modified())
            .ok();
        table.watched = Some(data_dir.to_owned());
        *table.seen.get_mut() = seen;
        table
    }

    /// Re-reads the secrets file if it changed since it was last read (at most once per
    /// [`RELOAD_CHECK_MILLIS`]). A file that cannot be read keeps the current tokens.
    fn refresh(&self) {
        let Some(dir) = &self.watched else { return };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.checked_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < RELOAD_CHECK_MILLIS
            || self
                .checked_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let modified = fs::metadata(dir.join(SECRETS_FILE_NAME))
            .and_then(|m| m.modified())
            .ok();
        let mut seen = self.seen.lock();
        if modified.is_none() || modified == *seen {
            return;
        }
        match SecretsFile::load_or_create(dir) {
            Ok((file, _)) => {
                let fresh: Vec<([u8; 32], TokenEntry)> = file
                    .tokens
                    .into_iter()
                    .filter_map(|e| {
                        let mut digest = [0u8; 32];
                        hex::decode_to_slice(&e.sha256, &mut digest)
                            .ok()
                            .map(|()| (digest, e))
                    })
                    .collect();
                tracing::info!(
                    tokens = fresh.len(),
                    "reloaded API tokens from the secrets file"
                );
                *self.entries.write() = fresh;
                *seen = modified;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not reload API tokens; keeping the current ones")
            }
        }
    }

    /// Adds an entry; one whose digest is not 64 hex digits is ignored.
    pub fn add(&self, entry: TokenEntry) {
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(&entry.sha256, &mut digest).is_ok() {
            self.entries.write().push((digest, entry));
        }
    }

    /// The caller holding `token`, if any. Compares against every entry in constant time.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        self.refresh();
        let digest = token_digest(token);
        let entries = self.entries.read();
        let mut found = None;
        for (d, e) in entries.iter() {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        found.map(|e| Caller {
            name: e.name.clone(),
            role: e.role,
            cnpj: e.cnpj,
            address: None,
        })
    }
}

/// Who is calling, from the `Authorization: Bearer` header.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's label.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// A terminal's customer.
    pub cnpj: Option<Cnpj>,
    /// The client's address, when known.
    pub address: Option<std::net::IpAddr>,
}

impl Caller {
    /// Refuses with 403 unless the caller's role is one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the {:?} role may not do this",
                self.role
            )))
        }
    }

    /// Support, auditors and admins may read.
    pub fn require_reader(&self) -> Result<(), ApiError> {
        self.require(&[Role::Support, Role::Auditor, Role::Admin])
    }

    /// Support and admins may run commands.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        self.require(&[Role::Support, Role::Admin])
    }

    /// The actor recorded in events.
    pub fn actor(&self) -> Result<Actor, ApiError> {
        Actor::operator(&self.name).map_err(|e| {
            tracing::error!(error = %e, "token name is not a valid actor");
            ApiError::Internal
        })
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let address = req.peer_addr().map(|a| a.ip());
        let (Some(token), Some(state)) = (token, req.app_data::<web::Data<AppState>>()) else {
            return ready(Err(ApiError::Unauthenticated));
        };
        if token.is_empty() {
            return ready(Err(ApiError::Unauthenticated));
        }
        // Guessing tokens: an address past its failures is refused before any comparison.
        let key = address.map(LimitKey::AuthFailure);
        if let Some(key) = &key {
            if state.limits.exhausted(key, AUTH_FAILURES_PER_MINUTE) {
                return ready(Err(ApiError::RateLimited(
                    "too many failed authentications from this address; retry in a minute".into(),
                )));
            }
        }
        match state.tokens.authenticate(token) {
            Some(mut caller) => {
                caller.address = address;
                ready(Ok(caller))
            }
            None => {
                if let Some(key) = key {
                    if !state.limits.hit(key, AUTH_FAILURES_PER_MINUTE) {
                        tracing::warn!(address = ?address, "failed authentications rate limited");
                    }
                }
                ready(Err(ApiError::Unauthenticated))
            }
        }
    }
}
