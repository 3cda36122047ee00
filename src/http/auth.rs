//! Bearer tokens: stored as SHA-256 digests with a role (and, for terminals, a CNPJ);
//! compared in constant time; never logged.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use ledger_events::{Actor, Cnpj};
use std::collections::HashMap;
use std::fs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use subtle::ConstantTimeEq;

use parking_lot::{Mutex, RwLock};

use super::error::ApiError;
use super::limits::{LimitKey, AUTH_FAILURES_PER_MINUTE};
use crate::config::{token_digest, Role, SecretsFile, TokenEntry, SECRETS_FILE_NAME};

/// How often, at most, the table looks at the secrets file for tokens created or revoked by
/// the CLI while the server runs.
const RELOAD_CHECK_MILLIS: u64 = 1000;

/// Token digests, bucketed by their first eight bytes so a lookup compares (in constant
/// time) only the few digests of its bucket, however many tokens there are.
#[derive(Debug, Default)]
struct Digests(HashMap<[u8; 8], Vec<TokenDigest>, ahash::RandomState>);

/// A token's SHA-256 digest and its entry.
type TokenDigest = ([u8; 32], TokenEntry);

impl Digests {
    fn insert(&mut self, digest: [u8; 32], entry: TokenEntry) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest[..8]);
        self.0.entry(prefix).or_default().push((digest, entry));
    }

    fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    fn find(&self, digest: &[u8; 32]) -> Option<&TokenEntry> {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest[..8]);
        let mut found = None;
        for (d, e) in self.0.get(&prefix).into_iter().flatten() {
            if bool::from(d.ct_eq(digest)) {
                found = Some(e);
            }
        }
        found
    }
}

impl FromIterator<([u8; 32], TokenEntry)> for Digests {
    fn from_iter<I: IntoIterator<Item = ([u8; 32], TokenEntry)>>(iter: I) -> Self {
        let mut d = Digests::default();
        for (digest, entry) in iter {
            d.insert(digest, entry);
        }
        d
    }
}

/// The tokens the server accepts. Tokens added through the API work at once; tokens created
/// or revoked in `secrets.toml` by the CLI take effect within about a second, because the
/// table re-reads the file when its modification time changes.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: RwLock<Digests>,
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
                let fresh: Digests = file
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
    ///
    /// Callers write the token to the secrets file first. Adding waits for a reload in
    /// progress (it holds `seen`): a reload that read the file before the token was written
    /// must not replace the table after the token was added, or the token would be lost
    /// until the file changes again.
    pub fn add(&self, entry: TokenEntry) {
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(&entry.sha256, &mut digest).is_ok() {
            let _no_reload = self.seen.lock();
            self.entries.write().insert(digest, entry);
        }
    }

    /// The caller holding `token`, if any: its SHA-256 digest is compared in constant time
    /// with the stored digests that share its first eight bytes.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        self.refresh();
        let digest = token_digest(token);
        self.entries.read().find(&digest).map(|e| Caller {
            token_sha256: e.sha256.clone(),
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
    /// The token's SHA-256 as stored (64 hex digits; not the token): what a relay's
    /// certified key is pinned to.
    pub token_sha256: String,
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

    /// The actor recorded in events: the token's name and id ([`crate::config::token_actor`]).
    pub fn actor(&self) -> Result<Actor, ApiError> {
        crate::config::token_actor(&self.name, &self.token_sha256).map_err(|e| {
            tracing::error!(error = %e, "token name is not a valid actor");
            ApiError::Internal
        })
    }
}

/// What authentication needs, shared by every worker of a server (the central one and a
/// relay's) as its own app data.
#[derive(Debug)]
pub struct Gate {
    /// Accepted tokens.
    pub tokens: TokenTable,
    /// Rate limits (failed authentication, offline activation).
    pub limits: super::limits::RateLimits,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Event streams open now (capped per token and in all).
    pub streams: Arc<super::sse::OpenStreams>,
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

impl Gate {
    /// The client's address: the peer's, unless the peer is a trusted proxy; then the
    /// nearest address in `X-Forwarded-For` that is not a trusted proxy (each proxy appends
    /// the address it heard from, so addresses left of an untrusted hop are the client's
    /// claims and never believed).
    pub fn client_address(&self, req: &HttpRequest) -> Option<std::net::IpAddr> {
        let peer = req.peer_addr().map(|a| a.ip())?;
        let trusted = |ip: &std::net::IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        let mut client = peer;
        let hops = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            match hop.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(&ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Some(client)
    }
}

/// A set of roles a route admits, for [`As`].
pub trait Admits {
    /// The admitted roles.
    const ROLES: &'static [Role];
}

/// Support and admins: the commands.
pub struct Operators;
/// Support, auditors and admins: the queries.
pub struct Readers;
/// Admins only: emergency release, tokens.
pub struct Admins;
/// Terminals and admins: check-ins.
pub struct Terminals;
/// Relays: their customer's feed, forwarding, key certificates.
pub struct Relays;

impl Admits for Operators {
    const ROLES: &'static [Role] = &[Role::Support, Role::Admin];
}
impl Admits for Readers {
    const ROLES: &'static [Role] = &[Role::Support, Role::Auditor, Role::Admin];
}
impl Admits for Admins {
    const ROLES: &'static [Role] = &[Role::Admin];
}
impl Admits for Terminals {
    const ROLES: &'static [Role] = &[Role::Terminal, Role::Admin];
}
impl Admits for Relays {
    const ROLES: &'static [Role] = &[Role::Relay];
}

/// A caller whose role is one of `R::ROLES`. As an extractor placed before the body, it
/// refuses (401, 403) before the body is read or parsed, so a refused caller learns nothing
/// from the body's validation.
pub struct As<R>(pub Caller, std::marker::PhantomData<R>);

impl<R> std::ops::Deref for As<R> {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.0
    }
}

impl<R: Admits> FromRequest for As<R> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(
            Caller::authenticate_request(req, payload).and_then(|caller| {
                caller.require(R::ROLES)?;
                Ok(As(caller, std::marker::PhantomData))
            }),
        )
    }
}

impl Caller {
    fn authenticate_request(req: &HttpRequest, _: &mut Payload) -> Result<Caller, ApiError> {
        let token = bearer_token(req);
        let (Some(token), Some(state)) = (token, req.app_data::<web::Data<Gate>>()) else {
            return Err(ApiError::Unauthenticated);
        };
        let address = state.client_address(req);
        if token.is_empty() {
            return Err(ApiError::Unauthenticated);
        }
        // A valid token is never refused: one client guessing behind a shop's NAT or a
        // proxy must not lock out the others there. Guesses are counted per address;
        // past the limit they answer 429 (and are logged once a minute) instead of 401.
        if let Some(mut caller) = state.tokens.authenticate(token) {
            caller.address = address;
            return Ok(caller);
        }
        let Some(address) = address else {
            return Err(ApiError::Unauthenticated);
        };
        let key = LimitKey::AuthFailure(address);
        let first_over = !state.limits.exhausted(&key, AUTH_FAILURES_PER_MINUTE);
        if state.limits.hit(key, AUTH_FAILURES_PER_MINUTE) {
            return Err(ApiError::Unauthenticated);
        }
        if first_over {
            tracing::warn!(%address, "failed authentications rate limited");
        }
        Err(ApiError::RateLimited(
            "too many failed authentications from this address; retry in a minute".into(),
        ))
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(Caller::authenticate_request(req, payload))
    }
}
