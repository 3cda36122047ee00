//! The migration runner: applies `migrations/NNNN_verb_noun.sql` (embedded in the binary) to
//! the store's schema, in order, once each, and refuses a database whose applied migrations
//! do not match this build's files.
//!
//! It is small on purpose: the store needs ordered files, a checksum per applied file and a
//! lock, nothing else, and this way the migration history sits in the same
//! `ledger_migrations` table whichever tool reads it. What it keeps:
//! - every applied file is a row of `ledger_migrations` (version, name, SHA-256 of the file,
//!   time); each file runs in its own transaction together with the insert of its row, so a
//!   file is applied whole or not at all;
//! - a file whose checksum differs from the one recorded (an applied migration was edited), a
//!   recorded version this build does not have (a newer build migrated the database) and a
//!   gap in the recorded versions are refused with [`StoreError::Migration`], changing nothing;
//! - the whole check-and-apply runs under a session-level advisory lock derived from the
//!   schema name, so two nodes starting together do not race: the second waits, then finds
//!   everything applied.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::conn::{check_schema, connect_spawned, pg_config, pg_error, timed};
use super::PgStoreConfig;
use crate::store::StoreError;

/// One migration file, embedded.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// The `NNNN` of the file name; versions are dense from 1.
    pub version: i32,
    /// The `verb_noun` of the file name.
    pub name: &'static str,
    /// The file's text.
    pub sql: &'static str,
}

impl Migration {
    /// `NNNN_verb_noun.sql`.
    pub fn file_name(&self) -> String {
        format!("{:04}_{}.sql", self.version, self.name)
    }

    /// SHA-256 of the file's bytes, in hex: what `ledger_migrations.checksum` records.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// Every migration of this build, in order. Append only: never edit or remove an entry whose
/// file may have been applied somewhere.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_events",
        sql: include_str!("../../../migrations/0001_create_events.sql"),
    },
    Migration {
        version: 2,
        name: "create_head",
        sql: include_str!("../../../migrations/0002_create_head.sql"),
    },
];

/// Longest a migration run may take, lock wait included.
const MIGRATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What [`migrate`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// File names applied by this run, in order.
    pub applied: Vec<String>,
    /// Migrations that were already applied (and whose checksums matched).
    pub already_applied: usize,
}

/// Brings the schema of `config` up to this build's migrations: creates the schema if it is
/// missing, checks the recorded checksums, applies what is missing. Safe to run from several
/// nodes at once. Fails with [`StoreError::Migration`] when the recorded history does not
/// match this build, [`StoreError::Unavailable`] when the database cannot be reached, and
/// [`StoreError::Database`] when a statement is refused (naming the file).
pub async fn migrate(config: &PgStoreConfig) -> Result<MigrationReport, StoreError> {
    let schema = config.schema_name();
    let pg = pg_config(&config.url, schema, config.connect_timeout)?;
    let client = connect_spawned(&pg, config.connect_timeout, "migrations").await?;
    timed(
        MIGRATE_TIMEOUT,
        "applying migrations",
        migrate_with(&client, schema, MIGRATIONS),
    )
    .await
}

/// The advisory lock key of a schema's migrations: the first 8 bytes of a SHA-256, so that
/// runners for different schemas of one database do not wait for each other.
fn lock_key(schema: &str) -> i64 {
    let digest = Sha256::digest(format!("license-ledger migrations\0{schema}").as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

/// [`migrate`] on a connection whose `search_path` is `schema`, with an explicit list (tests
/// pass an edited one to check the refusal).
#[doc(hidden)]
pub async fn migrate_with(
    client: &Client,
    schema: &str,
    migrations: &[Migration],
) -> Result<MigrationReport, StoreError> {
    check_schema(schema)?;
    let key = lock_key(schema);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(|e| pg_error("taking the migration lock", &e))?;
    let result = apply(client, schema, migrations).await;
    // Closing the connection would release the lock too; unlocking keeps it short.
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
    {
        tracing::debug!(error = %e, "releasing the migration lock");
    }
    result
}

async fn apply(
    client: &Client,
    schema: &str,
    migrations: &[Migration],
) -> Result<MigrationReport, StoreError> {
    // Look before creating: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
    // database even when the schema exists.
    let exists = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(|e| pg_error("looking up the schema", &e))?
        .is_some();
    if !exists {
        // `schema` passed check_schema: it needs no quoting.
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(|e| pg_error(&format!("creating schema {schema}"), &e))?;
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS ledger_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 checksum   text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(|e| pg_error("creating ledger_migrations", &e))?;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM ledger_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(|e| pg_error("reading ledger_migrations", &e))?;
    let mut report = MigrationReport::default();
    for (i, row) in rows.iter().enumerate() {
        let version: i32 = row
            .try_get(0)
            .map_err(|e| pg_error("reading ledger_migrations", &e))?;
        let name: String = row
            .try_get(1)
            .map_err(|e| pg_error("reading ledger_migrations", &e))?;
        let checksum: String = row
            .try_get(2)
            .map_err(|e| pg_error("reading ledger_migrations", &e))?;
        let applied = format!("{version:04}_{name}.sql");
        let Some(ours) = migrations.iter().find(|m| m.version == version) else {
            return Err(StoreError::Migration(format!(
                "the database has migration {applied}, which this build does not know: it was \
                 migrated by a newer build; run that build (or a newer one)"
            )));
        };
        if i32::try_from(i + 1).ok() != Some(version) {
            return Err(StoreError::Migration(format!(
                "ledger_migrations has {applied} but not every version before it"
            )));
        }
        if ours.name != name || ours.checksum() != checksum {
            return Err(StoreError::Migration(format!(
                "migration {applied} was applied with checksum {checksum}, but this build's \
                 {} has checksum {}: an applied migration must never be edited; restore the \
                 file and put the change in a new migration",
                ours.file_name(),
                ours.checksum()
            )));
        }
        report.already_applied += 1;
    }
    for m in migrations.iter().skip(rows.len()) {
        run_one(client, m).await?;
        tracing::info!(schema, migration = %m.file_name(), "applied migration");
        report.applied.push(m.file_name());
    }
    Ok(report)
}

async fn run_one(client: &Client, m: &Migration) -> Result<(), StoreError> {
    let context = format!("applying migration {}", m.file_name());
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| pg_error(&context, &e))?;
    let result = async {
        client.batch_execute(m.sql).await?;
        client
            .execute(
                "INSERT INTO ledger_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &m.checksum()],
            )
            .await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if let Err(e) = result {
        if let Err(rollback) = client.batch_execute("ROLLBACK").await {
            tracing::debug!(error = %rollback, "rolling back a failed migration");
        }
        return Err(pg_error(&context, &e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/` is embedded, in order, with dense versions; nothing is
    /// embedded that is not a file there.
    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS.iter().map(Migration::file_name).collect();
        assert_eq!(files, embedded);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "versions are dense from 1");
            let on_disk =
                std::fs::read_to_string(dir.join(m.file_name())).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(on_disk, m.sql);
        }
    }

    #[test]
    fn lock_keys_differ_per_schema() {
        assert_ne!(lock_key("public"), lock_key("ledger"));
        assert_eq!(lock_key("public"), lock_key("public"));
    }
}
