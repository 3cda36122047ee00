//! How a node learns that the head moved: its own commits (the writer moves the watch), and
//! everyone else's through `LISTEN` on a dedicated connection, with polling of `ledger_head`
//! as the fallback.
//!
//! Every append transaction calls `pg_notify(channel, new head position)`; the notification
//! is delivered only after the commit, so whatever a notification names is already visible
//! to any new statement. The watch only ever moves forward, and it is only a hint: a
//! subscription reads the rows themselves up to the head it saw. If a notification is lost
//! (the listen connection drops, the server restarts), the poll of `ledger_head` every
//! `poll_interval` catches up, and the listener reconnects with backoff, polling meanwhile.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Config};

use super::conn::{connect, pg_error, pool_error, timed};
use super::writer::advance;
use crate::store::StoreError;
use ledger_events::Position;

/// First wait before reconnecting the listen connection; doubles up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub(crate) const READ_HEAD: &str = "SELECT last_position, last_hash FROM ledger_head WHERE id = 1";

pub(crate) struct Listener {
    pub pg: Config,
    pub pool: Pool,
    pub channel: String,
    pub head_tx: Arc<watch::Sender<Position>>,
    pub poll_interval: Duration,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
    /// Changes (or closes) when the store shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl Listener {
    /// Runs until the store shuts down.
    pub async fn run(self) {
        let mut shutdown = self.shutdown.clone();
        let mut backoff = RECONNECT_MIN;
        loop {
            if self.stopping() {
                return;
            }
            let session = self.listen().await;
            // Whatever committed before LISTEN took effect is caught by this poll.
            self.poll().await;
            match session {
                Ok((client, mut driver)) => {
                    backoff = RECONNECT_MIN;
                    tracing::debug!(channel = %self.channel, "listening for appends");
                    let mut tick = tokio::time::interval(self.poll_interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = &mut driver => {
                                tracing::warn!(
                                    "lost the LISTEN connection to PostgreSQL; polling until it \
                                     is back"
                                );
                                break;
                            }
                            _ = tick.tick() => self.poll().await,
                            _ = shutdown.changed() => {
                                driver.abort();
                                return;
                            }
                        }
                    }
                    drop(client);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not LISTEN; polling meanwhile");
                }
            }
            // Wait before reconnecting, polling meanwhile.
            let until = tokio::time::Instant::now() + backoff;
            while tokio::time::Instant::now() < until {
                let nap = self.poll_interval.min(until - tokio::time::Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep(nap) => self.poll().await,
                    _ = shutdown.changed() => return,
                }
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }

    /// Opens the listen connection and subscribes to the channel. Returns the client (the
    /// connection lives while it does) and the task that drives the connection and moves the
    /// watch on each notification; the task ends when the connection does.
    async fn listen(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
        let (client, mut connection) = connect(&self.pg, self.connect_timeout, "listen").await?;
        let head_tx = self.head_tx.clone();
        let channel = self.channel.clone();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if n.channel() != channel {
                            continue;
                        }
                        match n.payload().parse::<Position>() {
                            Ok(position) => advance(&head_tx, position),
                            Err(_) => {
                                tracing::warn!(payload = n.payload(), "unexpected notification")
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "LISTEN connection failed");
                        return;
                    }
                    None => return,
                }
            }
        });
        // The channel name is built from a checked schema name; quote it as an identifier
        // all the same, since it contains a dot.
        let listen = format!("LISTEN \"{}\"", self.channel.replace('"', "\"\""));
        let subscribed = timed(self.op_timeout, "subscribing to appends", async {
            client
                .batch_execute(&listen)
                .await
                .map_err(|e| pg_error("subscribing to appends", &e))
        })
        .await;
        if let Err(e) = subscribed {
            driver.abort();
            return Err(e);
        }
        Ok((client, driver))
    }

    /// Reads the head once and moves the watch; failures are only logged (the next poll or
    /// notification tries again).
    async fn poll(&self) {
        if let Err(e) = self.read_head().await {
            tracing::debug!(error = %e, "polling the log head");
        }
    }

    async fn read_head(&self) -> Result<(), StoreError> {
        let position = timed(self.op_timeout, "polling the log head", async {
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| pool_error("polling the log head", e))?;
            let statement = client
                .prepare_cached(READ_HEAD)
                .await
                .map_err(|e| pg_error("polling the log head", &e))?;
            let row = client
                .query_one(&statement, &[])
                .await
                .map_err(|e| pg_error("polling the log head", &e))?;
            row.try_get::<_, i64>(0)
                .map_err(|e| pg_error("polling the log head", &e))
        })
        .await?;
        advance(&self.head_tx, u64::try_from(position).unwrap_or(0));
        Ok(())
    }
}
