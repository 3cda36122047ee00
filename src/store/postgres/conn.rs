//! Connections to PostgreSQL: the connection settings every connection shares (schema on the
//! `search_path`, timeouts), the read pool, dedicated connections for the writer and the
//! listener, and the one mapping from database errors to [`StoreError`].

use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

use crate::store::StoreError;

/// Longest schema name accepted: the notification channel (`ledger_events.<schema>`) must fit
/// PostgreSQL's 63-byte identifiers.
pub(crate) const SCHEMA_BYTES_MAX: usize = 48;

/// Checks a schema name: lower-case ASCII letters, digits and `_`, not starting with a digit
/// or `pg_`. Such a name needs no quoting anywhere, so it can go into `search_path`, `LISTEN`
/// and `CREATE SCHEMA` as it is.
pub(crate) fn check_schema(schema: &str) -> Result<(), StoreError> {
    let ok_chars = schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let ok_start = schema
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if schema.is_empty()
        || schema.len() > SCHEMA_BYTES_MAX
        || !ok_chars
        || !ok_start
        || schema.starts_with("pg_")
    {
        return Err(StoreError::Database(format!(
            "invalid schema name {schema:?}: use 1 to {SCHEMA_BYTES_MAX} lower-case letters, \
             digits or '_', not starting with a digit or 'pg_'"
        )));
    }
    Ok(())
}

/// The connection settings of every connection of a store: `url` plus the schema on the
/// `search_path` (so that SQL names no schema), an application name, the connect timeout and
/// TCP keepalives (so that a silently dropped connection is noticed).
pub(crate) fn pg_config(
    url: &str,
    schema: &str,
    connect_timeout: Duration,
) -> Result<Config, StoreError> {
    check_schema(schema)?;
    // The parse error never echoes the URL, which may hold a password.
    let mut config: Config = url
        .parse()
        .map_err(|e| StoreError::Database(format!("invalid database URL: {e}")))?;
    // Every statement of the store is a lookup or a range scan on an index. Without
    // `enable_seqscan=off`, a statement prepared while the table is small (or never analyzed:
    // autovacuum off) gets a cached generic plan with a sequential scan, and keeps it as the
    // table grows: the id lookup of each append then reads the whole log (seen in profiles).
    // `client_min_messages=warning`: the migrations' `IF NOT EXISTS` notices are not news.
    let ours =
        format!("-c search_path={schema} -c enable_seqscan=off -c client_min_messages=warning");
    let options = match config.get_options() {
        Some(existing) if !existing.trim().is_empty() => format!("{existing} {ours}"),
        _ => ours,
    };
    config.options(options);
    if config.get_application_name().is_none() {
        config.application_name("license-ledger");
    }
    config
        .connect_timeout(connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

/// A connection of its own (the writer's, the listener's, the migration runner's). The caller
/// must drive the returned [`Connection`] (spawn it or poll it for notifications).
pub(crate) async fn connect(
    config: &Config,
    timeout: Duration,
    what: &str,
) -> Result<(Client, Connection<Socket, NoTlsStream>), StoreError> {
    match tokio::time::timeout(timeout, config.connect(NoTls)).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(pg_error(&format!("connecting ({what})"), &e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "connecting ({what}): no answer within {timeout:?}"
        ))),
    }
}

/// Connects and drives the connection on its own task; for connections that receive no
/// notifications.
pub(crate) async fn connect_spawned(
    config: &Config,
    timeout: Duration,
    what: &'static str,
) -> Result<Client, StoreError> {
    let (client, connection) = connect(config, timeout, what).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, connection = what, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The pool the reads share. Connections are made on demand, up to `size`, each within
/// `connect_timeout`; a caller waits at most `wait_timeout` for a free one.
pub(crate) fn read_pool(
    config: Config,
    size: usize,
    connect_timeout: Duration,
    wait_timeout: Duration,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait_timeout))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout))
        .build()
        .map_err(|e| StoreError::Database(format!("building the connection pool: {e}")))
}

/// Runs `op`, giving up after `timeout` (the database is then taken to be unavailable).
pub(crate) async fn timed<T>(
    timeout: Duration,
    what: &str,
    op: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, op).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "{what}: no answer within {timeout:?}"
        ))),
    }
}

/// SQLSTATEs that mean "not now" rather than "never": connection exceptions (08), operator
/// intervention such as a shutdown (57P01-57P03) or a cancelled statement (57014),
/// insufficient resources (53, e.g. too many connections) and a lock timeout (55P03).
fn is_unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "57014" | "55P03")
}

/// Maps a driver error: a lost, refused or timed-out connection is
/// [`StoreError::Unavailable`]; anything else the server or the driver reports is
/// [`StoreError::Database`].
pub(crate) fn pg_error(context: &str, e: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let message = format!("{context}: {} (SQLSTATE {code})", db.message());
        return if is_unavailable_sqlstate(code) {
            StoreError::Unavailable(message)
        } else {
            StoreError::Database(message)
        };
    }
    let message = match e.source() {
        Some(source) => format!("{context}: {e}: {source}"),
        None => format!("{context}: {e}"),
    };
    let io = e
        .source()
        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
    let timeout = message.contains("timeout") || message.contains("timed out");
    if e.is_closed() || io || timeout {
        StoreError::Unavailable(message)
    } else {
        StoreError::Database(message)
    }
}

/// Maps a pool error: timeouts and connection failures are [`StoreError::Unavailable`].
pub(crate) fn pool_error(context: &str, e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error(context, &e),
        PoolError::Timeout(_) => StoreError::Unavailable(format!(
            "{context}: no database connection became available in time"
        )),
        PoolError::Closed => StoreError::Closed,
        other => StoreError::Database(format!("{context}: {other}")),
    }
}

/// The same error again, for answering every append of a batch that failed as a whole.
pub(crate) fn replicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Database(m) => StoreError::Database(m.clone()),
        StoreError::Closed => StoreError::Closed,
        StoreError::Corrupt {
            segment,
            offset,
            position,
            problem,
        } => StoreError::Corrupt {
            segment: segment.clone(),
            offset: *offset,
            position: *position,
            problem: problem.clone(),
        },
        other => StoreError::Database(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_that_would_need_quoting_are_refused() {
        for bad in [
            "",
            "Public",
            "a-b",
            "a b",
            "1abc",
            "pg_ledger",
            "x\"; drop",
            &"a".repeat(49),
        ] {
            assert!(check_schema(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["public", "ledger", "ledger_t_0f3a", "_x", &"a".repeat(48)] {
            assert!(check_schema(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn the_schema_goes_on_the_search_path_beside_url_options() {
        let c = pg_config(
            "postgres://u@h/db?options=-c%20statement_timeout%3D5s",
            "ledger",
            Duration::from_secs(1),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.get_options(),
            Some(
                "-c statement_timeout=5s -c search_path=ledger -c enable_seqscan=off \
                 -c client_min_messages=warning"
            )
        );
        assert_eq!(c.get_application_name(), Some("license-ledger"));
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        match pg_config(
            "postgres://u:s3cret@h:notaport/db",
            "public",
            Duration::ZERO,
        ) {
            Err(StoreError::Database(m)) => assert!(!m.contains("s3cret"), "{m}"),
            other => panic!("expected Database error, got {other:?}"),
        }
    }
}
