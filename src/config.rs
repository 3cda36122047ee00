//! Settings and secrets of `serve`.
//!
//! Settings come from, in order of precedence: the command line, `LEDGER_*` environment
//! variables, the TOML file named by `--config` / `LEDGER_CONFIG`, and the defaults. Secrets
//! (offline and emergency keys, API token hashes) live apart in `<data_dir>/secrets.toml`,
//! mode 0600, created on first start; they are held in types whose `Debug` never prints them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ledger_events::{Cnpj, Product};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::commands::Secrets;

/// Default listen address: the manual's HTTP port, loopback only.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8023";
/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "./data";
/// The secrets file's name inside the data directory.
pub const SECRETS_FILE_NAME: &str = "secrets.toml";
/// Bytes of a random key (offline, emergency) and of a token's secret.
const KEY_BYTES: usize = 32;
/// Prefix of every API token, so a leaked one is recognisable in a scan.
const TOKEN_PREFIX: &str = "llt_";

/// The optional TOML configuration file. Every key may be omitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory of the embedded log.
    pub data_dir: Option<PathBuf>,
    /// `ADDR:PORT` to listen on.
    pub listen: Option<String>,
    /// Hours after which an unchanged check-in is recorded again.
    pub record_interval_hours: Option<u32>,
    /// The IANA time zone days are counted in and times shown in (default
    /// `America/Sao_Paulo`; `--time-zone` wins).
    pub time_zone: Option<String>,
    /// HTTP worker threads.
    pub workers: Option<usize>,
    /// Minutes between two passes of the automatic renewal by contract (default 15; 0 turns
    /// it off, e.g. on all but one of several nodes, although running it on several is safe).
    pub renewal_interval_minutes: Option<u32>,
    /// The `relay` command's settings.
    pub relay: Option<RelayFileConfig>,
    /// `file` (default) or `postgres`.
    pub store: Option<crate::cli::backend::StoreKind>,
    /// PostgreSQL connection URL (keep the file mode 0600 when it holds a password).
    pub database_url: Option<String>,
    /// PostgreSQL schema.
    pub database_schema: Option<String>,
    /// Reverse proxies (addresses or CIDR networks, e.g. `["127.0.0.1", "10.0.0.0/8"]`)
    /// whose `X-Forwarded-For` names the client; from anyone else the header is ignored.
    pub trusted_proxies: Option<Vec<String>>,
    /// PEM certificate chain for HTTPS (`--tls-cert` wins).
    pub tls_cert: Option<PathBuf>,
    /// Its PEM private key (`--tls-key` wins).
    pub tls_key: Option<PathBuf>,
    /// Write quotas of terminal and relay tokens (`[quotas]`; see `crate::http::quotas`).
    pub quotas: Option<QuotasFileConfig>,
}

/// The `[quotas]` table of the configuration file: what terminal and relay tokens may make
/// the center write (each at least 1; an omitted key keeps its default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasFileConfig {
    /// Check-ins that append per terminal token per minute (default 120).
    pub terminal_records_per_minute: Option<u32>,
    /// Records due only to an IP or program-version change per terminal per hour
    /// (default 12).
    pub terminal_changes_per_hour: Option<u32>,
    /// New terminals per customer per UTC day (default 200).
    pub unknown_terminals_per_day: Option<u32>,
    /// Forwarded events per relay token per minute (default 12000).
    pub relay_events_per_minute: Option<u32>,
}

/// The `[relay]` table of the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFileConfig {
    /// The center's base URL.
    pub upstream: Option<String>,
    /// The customer served.
    pub cnpj: Option<String>,
    /// The center's relay token (keep the file mode 0600 when it holds one).
    pub token: Option<String>,
    /// `ADDR:PORT` terminals reach the relay on.
    pub listen: Option<String>,
    /// PEM certificate chain the relay serves HTTPS with (`--tls-cert` wins).
    pub tls_cert: Option<PathBuf>,
    /// Its PEM private key (`--tls-key` wins).
    pub tls_key: Option<PathBuf>,
    /// Extra PEM root certificate(s) the center's certificate is checked against
    /// (`--upstream-ca` wins).
    pub upstream_ca: Option<PathBuf>,
    /// Accept a plain `http://` upstream (loopback testing only).
    pub allow_insecure_upstream: Option<bool>,
    /// The center's public key, hex, pinned before first contact (`--center-key` wins).
    pub center_key: Option<String>,
}

/// Why the configuration or the secrets could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A token of that name exists already: names are the actors of the log, so two tokens
    /// may not share one (a support token named `admin` would pass for the admin).
    #[error("a token named {name:?} exists already; choose another name (see `token list`)")]
    NameTaken {
        /// The name asked for.
        name: String,
    },
    /// The relay token has another key certified already (one active key per relay token).
    #[error(
        "this relay token has the key {key_id} certified since {since}; an admin revokes it \
         with `license-ledger token revoke-key {token}` before another key can be certified"
    )]
    RelayKeyTaken {
        /// The certified key's id.
        key_id: String,
        /// When it was first certified (RFC 3339).
        since: String,
        /// The relay token's name.
        token: String,
    },
    /// The secrets file is readable by others.
    #[error("{path} has mode {mode:o}; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

impl FileConfig {
    /// The write quotas: the `[quotas]` table over the defaults; a zero is refused, naming
    /// the key.
    pub fn quotas(&self) -> Result<crate::http::quotas::QuotaSettings, String> {
        let mut q = crate::http::quotas::QuotaSettings::default();
        let Some(file) = self.quotas else {
            return Ok(q);
        };
        let keys = [
            (
                "terminal_records_per_minute",
                file.terminal_records_per_minute,
                &mut q.terminal_records_per_minute,
            ),
            (
                "terminal_changes_per_hour",
                file.terminal_changes_per_hour,
                &mut q.terminal_changes_per_hour,
            ),
            (
                "unknown_terminals_per_day",
                file.unknown_terminals_per_day,
                &mut q.unknown_terminals_per_day,
            ),
            (
                "relay_events_per_minute",
                file.relay_events_per_minute,
                &mut q.relay_events_per_minute,
            ),
        ];
        for (key, value, slot) in keys {
            match value {
                Some(0) => return Err(format!("quotas.{key}: must be at least 1")),
                Some(n) => *slot = n,
                None => {}
            }
        }
        Ok(q)
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let config: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Err(message) = config.quotas() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message,
            });
        }
        if config.workers.is_some_and(|n| !(1..=256).contains(&n)) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "workers: must be between 1 and 256".into(),
            });
        }
        Ok(config)
    }
}

/// An API caller's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A point-of-sale terminal of one customer: check-in only, own CNPJ only.
    Terminal,
    /// Support staff: commands and queries, no emergency release.
    Support,
    /// Read-only: queries, the raw log and the signed head.
    Auditor,
    /// Everything, including emergency release and tokens.
    Admin,
    /// A customer's on-premises relay: follows that customer's part of the log, forwards
    /// what happened at the relay, and gets its key certified; nothing else.
    Relay,
}

impl Role {
    /// Whether tokens of this role are bound to one customer (terminals and relays).
    pub fn is_bound_to_customer(self) -> bool {
        matches!(self, Role::Terminal | Role::Relay)
    }
}

/// One stored token: its SHA-256 and what it may do. The token itself is never stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// A label for logs ("admin", "caixa-loja-3").
    pub name: String,
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
    /// The role.
    pub role: Role,
    /// The customer a terminal token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnpj: Option<Cnpj>,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("cnpj", &self.cnpj)
            .finish_non_exhaustive()
    }
}

/// The secrets file as stored.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsToml {
    /// Product name → offline key (hex).
    #[serde(default)]
    offline: BTreeMap<String, String>,
    /// Emergency-release key (hex).
    #[serde(default)]
    emergency: String,
    /// Audit key (hex): the log keeps MACs of issued offline counter-keys under it. Files
    /// written before it existed get one at their next load.
    #[serde(default)]
    audit: String,
    /// API tokens, hashed.
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    /// When each token was created (RFC 3339), by its `sha256`; tokens made before this
    /// existed, or through an older path, have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    token_created: BTreeMap<String, String>,
    /// The one answer-signing key each relay token may have certified, by the token's
    /// `sha256`: pinned by its first certificate request, removed by `token revoke-key` (or
    /// with the token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    relay_keys: BTreeMap<String, RelayKey>,
}

/// The answer-signing key a relay token has certified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayKey {
    /// The relay's Ed25519 public key, 64 lower-case hex digits.
    pub public_key: String,
    /// When it was first certified (RFC 3339).
    pub since: String,
}

impl RelayKey {
    /// The key's id (the `key_id` of the answers it signs): the first 16 hex digits of
    /// SHA-256 of the 32-byte key.
    pub fn key_id(&self) -> String {
        let mut bytes = [0u8; 32];
        match hex::decode_to_slice(&self.public_key, &mut bytes) {
            Ok(()) => hex::encode(&Sha256::digest(bytes)[..8]),
            Err(_) => "(malformed)".into(),
        }
    }
}

/// What [`SecretsFile::pin_relay_key`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayKeyPin {
    /// The token had no key: this one is now its key.
    New,
    /// The token's key is this one already.
    Same,
}

/// The loaded secrets file.
pub struct SecretsFile {
    path: PathBuf,
    created: BTreeMap<String, String>,
    relay_keys: BTreeMap<String, RelayKey>,
    /// Keys the command side uses.
    pub secrets: Secrets,
    /// Stored tokens.
    pub tokens: Vec<TokenEntry>,
}

impl std::fmt::Debug for SecretsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretsFile({})", self.path.display())
    }
}

/// SHA-256 of a token, as stored.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token (`llt_` + 64 hex digits).
pub fn new_token() -> Result<String, std::io::Error> {
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(random_bytes()?)))
}

fn random_bytes() -> Result<[u8; KEY_BYTES], std::io::Error> {
    let mut b = [0u8; KEY_BYTES];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(b)
}

impl SecretsFile {
    /// Loads `<data_dir>/secrets.toml`, creating it (mode 0600) with fresh keys for every
    /// product and one `admin` token if absent; returns the file and, on creation, that
    /// token (shown once, never stored).
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, Option<String>), ConfigError> {
        let path = data_dir.join(SECRETS_FILE_NAME);
        let io = |source| ConfigError::Io {
            path: path.clone(),
            source,
        };
        let (mut stored, admin) = match fs::read_to_string(&path) {
            Ok(text) => {
                let mode = fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(ConfigError::Permissions { path, mode });
                }
                let stored: SecretsToml =
                    toml::from_str(&text).map_err(|e| ConfigError::Invalid {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                (stored, None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut stored = SecretsToml {
                    emergency: hex::encode(random_bytes().map_err(io)?),
                    audit: hex::encode(random_bytes().map_err(io)?),
                    ..SecretsToml::default()
                };
                for p in Product::ALL {
                    stored
                        .offline
                        .insert(p.to_string(), hex::encode(random_bytes().map_err(io)?));
                }
                let token = new_token().map_err(io)?;
                stored.tokens.push(TokenEntry {
                    name: "admin".into(),
                    sha256: hex::encode(token_digest(&token)),
                    role: Role::Admin,
                    cnpj: None,
                });
                write_secrets(&path, &stored, true)?;
                tracing::info!(path = %path.display(), "created the secrets file and an admin token");
                (stored, Some(token))
            }
            Err(e) => return Err(io(e)),
        };
        if stored.audit.is_empty() {
            // A file from before the audit key: add one, once (under the file's lock, so a
            // server and a CLI starting together agree on it), and keep it from now on: a
            // retried offline activation checks its recomputed code against a MAC under it.
            let mut audit = String::new();
            rewrite_secrets(&path, |s| {
                if s.audit.is_empty() {
                    s.audit = hex::encode(random_bytes().map_err(io)?);
                    tracing::info!(path = %path.display(), "added an audit key to the secrets file");
                }
                audit = s.audit.clone();
                Ok(())
            })?;
            stored.audit = audit;
        }
        let invalid = |message: String| ConfigError::Invalid {
            path: path.clone(),
            message,
        };
        let mut secrets = Secrets::default();
        for (name, key) in &stored.offline {
            let product =
                Product::parse(name).map_err(|e| invalid(format!("offline.{name}: {e}")))?;
            let key = hex::decode(key).map_err(|_| invalid(format!("offline.{name}: not hex")))?;
            secrets.offline.insert(product, key);
        }
        secrets.emergency =
            hex::decode(&stored.emergency).map_err(|_| invalid("emergency: not hex".into()))?;
        secrets.audit = hex::decode(&stored.audit).map_err(|_| invalid("audit: not hex".into()))?;
        if secrets.audit.len() < 16 {
            return Err(invalid(format!(
                "audit: {} bytes; the audit key must be at least 16 random bytes (32 hex digits)",
                secrets.audit.len()
            )));
        }
        for t in &stored.tokens {
            if t.sha256.len() != 64 || hex::decode(&t.sha256).is_err() {
                return Err(invalid(format!(
                    "token {}: sha256 must be 64 hex digits",
                    t.name
                )));
            }
            if t.role.is_bound_to_customer() != t.cnpj.is_some() {
                return Err(invalid(format!(
                    "token {}: a terminal token needs a cnpj, other roles none",
                    t.name
                )));
            }
        }
        let tokens = stored.tokens;
        Ok((
            Self {
                path,
                created: stored.token_created,
                relay_keys: stored.relay_keys,
                secrets,
                tokens,
            },
            admin,
        ))
    }

    /// Adds a token entry and rewrites the file (atomically, mode 0600).
    pub fn add_token(&mut self, entry: TokenEntry) -> Result<(), ConfigError> {
        self.add_tokens(vec![entry])
    }

    /// Adds token entries with one rewrite of the file (atomically, mode 0600). Refuses
    /// the lot if a name is taken, in the file or twice among `entries`.
    pub fn add_tokens(&mut self, entries: Vec<TokenEntry>) -> Result<(), ConfigError> {
        self.rewrite(|stored| {
            for (i, entry) in entries.iter().enumerate() {
                name_free(&stored.tokens, &entry.name)?;
                name_free(&entries[..i], &entry.name)?;
            }
            stored.tokens.extend(entries.iter().cloned());
            Ok(())
        })?;
        self.tokens.extend(entries);
        Ok(())
    }
}

/// Fails when a token in `tokens` is named `name`.
fn name_free(tokens: &[TokenEntry], name: &str) -> Result<(), ConfigError> {
    if tokens.iter().any(|t| t.name == name) {
        return Err(ConfigError::NameTaken { name: name.into() });
    }
    Ok(())
}

/// A token's public id: the first 12 hex digits of its SHA-256 (not enough to find the
/// token, enough to name it in `token list` and `token revoke`).
pub fn token_id(entry: &TokenEntry) -> &str {
    digest_id(&entry.sha256)
}

fn digest_id(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// Longest token name, in bytes: the actor recorded for a token is its name, a space, `#`
/// and its 12-digit id, and must fit [`ledger_events::Actor::MAX_NAME_LEN`].
pub const MAX_TOKEN_NAME_LEN: usize = ledger_events::Actor::MAX_NAME_LEN - 14;

/// Checks a new token's name: 1 to [`MAX_TOKEN_NAME_LEN`] bytes, no control characters.
pub fn check_token_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_TOKEN_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_TOKEN_NAME_LEN} bytes (it is {})",
            name.len()
        ));
    }
    ledger_events::Actor::operator(name)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The actor recorded for what a token does: `NAME #ID`, the token's name and its
/// [`token_id`], so that the log tells apart two tokens that bore the same name at different
/// times (names are unique only among the tokens that exist now). A name too long for the
/// actor (written into the secrets file by hand) is cut at a character boundary.
pub fn token_actor(
    name: &str,
    sha256: &str,
) -> Result<ledger_events::Actor, ledger_events::ValueError> {
    let mut end = name.len().min(MAX_TOKEN_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    ledger_events::Actor::operator(&format!("{} #{}", &name[..end], digest_id(sha256)))
}

impl SecretsFile {
    /// The secrets file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the token with this digest was created (RFC 3339), if recorded.
    pub fn created(&self, entry: &TokenEntry) -> Option<&str> {
        self.created.get(&entry.sha256).map(String::as_str)
    }

    /// Adds a token entry created at `at` and rewrites the file (atomically, mode 0600).
    pub fn add_token_at(
        &mut self,
        entry: TokenEntry,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), ConfigError> {
        let created = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let sha = entry.sha256.clone();
        self.rewrite(|stored| {
            name_free(&stored.tokens, &entry.name)?;
            stored.tokens.push(entry.clone());
            stored.token_created.insert(sha.clone(), created.clone());
            Ok(())
        })?;
        self.tokens.push(entry);
        self.created.insert(sha, created);
        Ok(())
    }

    /// Removes the token named `name_or_id` (its name, or its [`token_id`]) and rewrites the
    /// file; returns the removed entry. Refuses a name several tokens share.
    pub fn remove_token(&mut self, name_or_id: &str) -> Result<TokenEntry, ConfigError> {
        let path = self.path.clone();
        let invalid = |message: String| ConfigError::Invalid {
            path: path.clone(),
            message,
        };
        let matches: Vec<&TokenEntry> = self
            .tokens
            .iter()
            .filter(|t| t.name == name_or_id || token_id(t) == name_or_id)
            .collect();
        let entry = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(invalid(format!(
                    "no token is named {name_or_id:?} or has that id; see `token list`"
                )))
            }
            _ => {
                return Err(invalid(format!(
                    "{} tokens are named {name_or_id:?}; revoke one by its id (see `token list`)",
                    matches.len()
                )))
            }
        };
        self.rewrite(|stored| {
            stored.tokens.retain(|t| t.sha256 != entry.sha256);
            stored.token_created.remove(&entry.sha256);
            stored.relay_keys.remove(&entry.sha256);
            Ok(())
        })?;
        self.tokens.retain(|t| t.sha256 != entry.sha256);
        self.created.remove(&entry.sha256);
        self.relay_keys.remove(&entry.sha256);
        Ok(entry)
    }

    /// The key the relay token with this entry has certified, if any (as last read).
    pub fn relay_key(&self, entry: &TokenEntry) -> Option<&RelayKey> {
        self.relay_keys.get(&entry.sha256)
    }

    /// Makes `public_key` (64 hex digits) the one key the relay token with digest
    /// `token_sha256` may have certified, unless it has another: one active key per relay
    /// token. Decided on the file as it is now, under its lock, so a key revoked by the CLI a
    /// moment ago is seen and two requests racing pin one key.
    pub fn pin_relay_key(
        &mut self,
        token_sha256: &str,
        token_name: &str,
        public_key: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<RelayKeyPin, ConfigError> {
        let wanted = RelayKey {
            public_key: public_key.to_ascii_lowercase(),
            since: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let mut outcome = RelayKeyPin::Same;
        let mut pinned = wanted.clone();
        self.rewrite_if(|stored| match stored.relay_keys.get(token_sha256) {
            Some(key) if key.public_key == wanted.public_key => {
                pinned = key.clone();
                Ok(false)
            }
            Some(key) => Err(ConfigError::RelayKeyTaken {
                key_id: key.key_id(),
                since: key.since.clone(),
                token: token_name.to_owned(),
            }),
            None => {
                stored
                    .relay_keys
                    .insert(token_sha256.to_owned(), wanted.clone());
                outcome = RelayKeyPin::New;
                Ok(true)
            }
        })?;
        self.relay_keys.insert(token_sha256.to_owned(), pinned);
        Ok(outcome)
    }

    /// Revokes the key the relay token named `name_or_id` has certified: its next
    /// certificate request pins the key it then presents. Returns the revoked key. Answers
    /// already signed under a certificate of that key stay verifiable until the
    /// certificate's `valid_until`.
    pub fn revoke_relay_key(&mut self, name_or_id: &str) -> Result<RelayKey, ConfigError> {
        let path = self.path.clone();
        let invalid = |message: String| ConfigError::Invalid {
            path: path.clone(),
            message,
        };
        let entry = self
            .tokens
            .iter()
            .find(|t| t.name == name_or_id || token_id(t) == name_or_id)
            .cloned()
            .ok_or_else(|| {
                invalid(format!(
                    "no token is named {name_or_id:?} or has that id; see `token list`"
                ))
            })?;
        let mut revoked = None;
        self.rewrite_if(|stored| {
            revoked = stored.relay_keys.remove(&entry.sha256);
            Ok(revoked.is_some())
        })?;
        self.relay_keys.remove(&entry.sha256);
        revoked.ok_or_else(|| {
            invalid(format!(
                "the token {:?} has no certified relay key",
                entry.name
            ))
        })
    }

    /// Re-reads the file, changes it, and writes it back atomically, holding
    /// `secrets.toml.lock` so that the server and the CLI never lose each other's change.
    fn rewrite(
        &self,
        change: impl FnOnce(&mut SecretsToml) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        rewrite_secrets(&self.path, change)
    }

    /// [`SecretsFile::rewrite`], writing only when `change` answers that it changed
    /// something.
    fn rewrite_if(
        &self,
        change: impl FnOnce(&mut SecretsToml) -> Result<bool, ConfigError>,
    ) -> Result<(), ConfigError> {
        rewrite_secrets_if(&self.path, change)
    }
}

/// [`SecretsFile::rewrite`] of the file at `path`.
fn rewrite_secrets(
    path: &Path,
    change: impl FnOnce(&mut SecretsToml) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    rewrite_secrets_if(path, |stored| change(stored).map(|()| true))
}

/// [`rewrite_secrets`], writing only when `change` answers that it changed something.
fn rewrite_secrets_if(
    path: &Path,
    change: impl FnOnce(&mut SecretsToml) -> Result<bool, ConfigError>,
) -> Result<(), ConfigError> {
    {
        let lock_path = path.with_extension("toml.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|source| ConfigError::Io {
                path: lock_path.clone(),
                source,
            })?;
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut stored: SecretsToml = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if !change(&mut stored)? {
            return Ok(());
        }
        let written = write_secrets(path, &stored, false);
        drop(lock);
        written
    }
}

/// Writes the secrets file with mode 0600: directly when creating it, else through a
/// temporary file renamed over it.
fn write_secrets(path: &Path, stored: &SecretsToml, create_new: bool) -> Result<(), ConfigError> {
    let text = toml::to_string(stored).map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let target = if create_new {
        path.to_owned()
    } else {
        path.with_extension("toml.tmp")
    };
    let io = |source| ConfigError::Io {
        path: target.clone(),
        source,
    };
    if !create_new {
        let _ = fs::remove_file(&target);
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    if !create_new {
        fs::rename(&target, path).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_2_one_relay_key_per_relay_token_pinned_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = SecretsFile::load_or_create(dir.path()).unwrap();
        let relay = TokenEntry {
            name: "relay-a".into(),
            sha256: "ab".repeat(32),
            role: Role::Relay,
            cnpj: Some(Cnpj::parse("11222333000181").unwrap()),
        };
        file.add_token(relay.clone()).unwrap();
        let (k1, k2) = ("11".repeat(32), "22".repeat(32));
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
            .unwrap()
            .to_utc();
        let pin = |file: &mut SecretsFile, key: &str| {
            file.pin_relay_key(&relay.sha256, &relay.name, key, at)
        };
        assert_eq!(pin(&mut file, &k1).unwrap(), RelayKeyPin::New);
        assert_eq!(
            pin(&mut file, &k1.to_uppercase()).unwrap(),
            RelayKeyPin::Same
        );
        let taken = pin(&mut file, &k2).unwrap_err();
        assert!(
            matches!(&taken, ConfigError::RelayKeyTaken { token, .. } if token == "relay-a"),
            "{taken}"
        );
        // Another process (the CLI) sees the pin in the file, and revokes it there.
        let (mut cli, _) = SecretsFile::load_or_create(dir.path()).unwrap();
        assert_eq!(cli.relay_key(&relay).unwrap().public_key, k1);
        assert_eq!(cli.revoke_relay_key("relay-a").unwrap().public_key, k1);
        assert!(cli.revoke_relay_key("relay-a").is_err());
        // The server decides on the file as it is now: the next key is pinned.
        assert_eq!(pin(&mut file, &k2).unwrap(), RelayKeyPin::New);
        // Revoking the token drops its pin.
        file.remove_token("relay-a").unwrap();
        let (again, _) = SecretsFile::load_or_create(dir.path()).unwrap();
        assert!(again.relay_keys.is_empty());
    }

    #[test]
    fn the_secrets_file_is_created_once_with_mode_0600_and_an_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let (a, token) = SecretsFile::load_or_create(dir.path()).unwrap();
        let token = token.unwrap();
        let path = dir.path().join(SECRETS_FILE_NAME);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token), "the token itself is never stored");
        assert_eq!(a.secrets.offline.len(), Product::ALL.len());
        let (b, again) = SecretsFile::load_or_create(dir.path()).unwrap();
        assert!(again.is_none());
        assert_eq!(b.tokens, a.tokens);
        assert_eq!(b.secrets.emergency, a.secrets.emergency);
        assert_eq!(b.secrets.offline.len(), Product::ALL.len());
    }

    #[test]
    fn a_secrets_file_from_before_the_audit_key_gets_one_once_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (fresh, _) = SecretsFile::load_or_create(dir.path()).unwrap();
        assert_eq!(fresh.secrets.audit.len(), KEY_BYTES);
        let path = dir.path().join(SECRETS_FILE_NAME);
        let old: String = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("audit"))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&path, &old).unwrap();
        let (a, _) = SecretsFile::load_or_create(dir.path()).unwrap();
        assert_eq!(a.secrets.audit.len(), KEY_BYTES);
        assert_ne!(a.secrets.audit, fresh.secrets.audit);
        assert!(fs::read_to_string(&path).unwrap().contains("audit = "));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (b, _) = SecretsFile::load_or_create(dir.path()).unwrap();
        assert_eq!(b.secrets.audit, a.secrets.audit, "kept from then on");
        assert_eq!(b.secrets.emergency, fresh.secrets.emergency);
        assert_eq!(b.tokens, fresh.tokens);
        // A short audit key is refused, naming it.
        let short = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("audit") {
                    "audit = \"00ff\"\n".to_owned()
                } else {
                    format!("{l}\n")
                }
            })
            .collect::<String>();
        fs::write(&path, short).unwrap();
        match SecretsFile::load_or_create(dir.path()) {
            Err(ConfigError::Invalid { message, .. }) => {
                assert!(message.contains("audit"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_config_file_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nrecord_interval_hours = 12\n",
        )
        .unwrap();
        let c = FileConfig::load(&path).unwrap();
        assert_eq!(c.listen.as_deref(), Some("0.0.0.0:9000"));
        fs::write(&path, "lisen = 1\n").unwrap();
        assert!(FileConfig::load(&path).is_err());
    }
}
