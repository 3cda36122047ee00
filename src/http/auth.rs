//! Bearer tokens: stored as SHA-256 digests with a role (and, for terminals, a CNPJ);
//! compared in constant time; never logged.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use ledger_events::{Actor, Cnpj};
use parking_lot::RwLock;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::{token_digest, Role, TokenEntry};

/// The tokens the server accepts; tokens added while it runs work at once.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: RwLock<Vec<([u8; 32], TokenEntry)>>,
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

    /// Adds an entry; one whose digest is not 64 hex digits is ignored.
    pub fn add(&self, entry: TokenEntry) {
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(&entry.sha256, &mut digest).is_ok() {
            self.entries.write().push((digest, entry));
        }
    }

    /// The caller holding `token`, if any. Compares against every entry in constant time.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
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
        let caller = match (token, req.app_data::<web::Data<AppState>>()) {
            (Some(t), Some(state)) if !t.is_empty() => state.tokens.authenticate(t),
            _ => None,
        };
        ready(caller.ok_or(ApiError::Unauthenticated))
    }
}
