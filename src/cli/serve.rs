//! `serve`: opens the store (file or PostgreSQL), starts the ledger, loads the keys and tokens, and serves the
//! HTTP API until SIGTERM or Ctrl-C; then stops accepting, lets in-flight requests finish,
//! and closes the log.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use parking_lot::Mutex;

use crate::app::answers::{random_seed, AnswerSigner, KeyError};
use crate::app::{AppError, Ledger, LedgerConfig};
use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigError, SecretsFile};
use crate::derived::DerivedConfig;
use crate::http::{self, AppState, TokenTable};
use crate::store::{EventStore, StoreError};

/// Options of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on [default: 127.0.0.1:8023, or `listen` in the config file].
    #[arg(long, env = "LEDGER_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Fill an empty store with the demo data set (see `demo`) before serving.
    #[arg(long)]
    pub demo: bool,
    /// HTTP worker threads [default: two per CPU core, or `workers` in the config file].
    #[arg(long, env = "LEDGER_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,
    /// Serve HTTPS with this PEM certificate chain (the server's certificate first); needs
    /// --tls-key [or `tls_cert` in the config file]. Without both: plain HTTP.
    #[arg(long, env = "LEDGER_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1) [or `tls_key` in the
    /// config file].
    #[arg(long, env = "LEDGER_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

/// Wraps the opened store before the ledger uses it (tests that control what the read model
/// sees, e.g. how fast it catches up).
pub type StoreLayer = Arc<dyn Fn(Arc<dyn EventStore>) -> Arc<dyn EventStore> + Send + Sync>;

/// Everything `serve` needs, resolved from flags, environment, config file and defaults.
#[derive(Clone)]
pub struct ServeSettings {
    /// Data directory (keys and tokens; the log too with the file store).
    pub data_dir: PathBuf,
    /// Where the log is.
    pub log: super::backend::Log,
    /// Listen address (port 0 picks a free one).
    pub listen: String,
    /// Command-side settings.
    pub ledger: LedgerConfig,
    /// HTTP worker threads.
    pub workers: usize,
    /// The time source of every decision and record ([`SystemClock`] except in tests that
    /// travel in time).
    pub clock: Arc<dyn Clock>,
    /// What the ledger reads and writes the log through, around the opened store (`None`:
    /// the store itself; tests only).
    pub store_layer: Option<StoreLayer>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (`trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// HTTPS (`--tls-cert`/`--tls-key`), or `None` for plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Write quotas of terminal and relay tokens (`[quotas]`).
    pub quotas: crate::http::quotas::QuotaSettings,
    /// Period of the automatic renewal by contract (`renewal_interval_minutes`; `None`: off).
    pub renewal_every: Option<std::time::Duration>,
}

impl std::fmt::Debug for ServeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeSettings")
            .field("data_dir", &self.data_dir)
            .field("log", &self.log.describe())
            .field("listen", &self.listen)
            .field("ledger", &self.ledger)
            .field("workers", &self.workers)
            .field("now", &self.clock.now())
            .field("store_layer", &self.store_layer.is_some())
            .field("trusted_proxies", &self.trusted_proxies)
            .field("tls", &self.tls.is_some())
            .field("quotas", &self.quotas)
            .field("renewal_every", &self.renewal_every)
            .finish()
    }
}

impl ServeSettings {
    /// A server on 127.0.0.1 with a free port, one worker, default command settings, over
    /// `data_dir` (what tests and local tools start).
    pub fn loopback(data_dir: &std::path::Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            log: super::backend::Log::File(data_dir.to_path_buf()),
            listen: "127.0.0.1:0".into(),
            ledger: LedgerConfig::default(),
            workers: 1,
            clock: Arc::new(SystemClock),
            store_layer: None,
            trusted_proxies: Vec::new(),
            tls: None,
            quotas: crate::http::quotas::QuotaSettings::default(),
            // Tests run a renewal pass themselves when they mean to.
            renewal_every: None,
        }
    }
}

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Configuration or secrets.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The answer key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ledger.
    #[error(transparent)]
    App(#[from] AppError),
    /// Binding or running the listener.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `https` with TLS, else `http`.
    pub scheme: &'static str,
    /// The admin token, when this start created the secrets file (shown once).
    pub new_admin_token: Option<String>,
    /// What the demo fill created, when `start_with(.., true)` found the store empty.
    pub demo: Option<super::demo::DemoSummary>,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    renewals: Option<tokio::task::JoinHandle<()>>,
    last_seen: tokio::task::JoinHandle<()>,
    store: super::backend::Opened,
    ledger: Arc<Ledger>,
}

impl Running {
    /// The ledger behind the server.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Stops accepting, waits for in-flight requests, then closes the log.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.handle.stop(true).await;
        if let Some(renewals) = &self.renewals {
            renewals.abort();
        }
        // `shutdown` below writes the last-communication file once more.
        self.last_seen.abort();
        let served = self.task.await.map_err(|e| ServeError::Io {
            context: "joining the server".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        // Leaves a snapshot, so that the next start resumes where this one stopped.
        self.ledger.shutdown().await;
        drop(self.ledger);
        self.store.close().await?;
        served.map_err(|source| ServeError::Io {
            context: "serving".into(),
            source,
        })
    }
}

/// Opens everything and starts serving in the background (on the current tokio runtime).
pub async fn start(settings: &ServeSettings) -> Result<Running, ServeError> {
    start_with(settings, false).await
}

/// Like [`start`]; with `demo`, an empty store is first filled with the demo data set (before
/// the listener accepts anything).
pub async fn start_with(settings: &ServeSettings, demo: bool) -> Result<Running, ServeError> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| ServeError::Io {
        context: format!("creating {}", settings.data_dir.display()),
        source,
    })?;
    let clock = settings.clock.clone();
    let store = settings.log.open_store(clock.clone()).await?;
    match open_rest(settings, store.clone(), clock, demo).await {
        Ok(running) => Ok(running),
        Err(e) => {
            let _ = store.close().await;
            Err(e)
        }
    }
}

async fn open_rest(
    settings: &ServeSettings,
    store: super::backend::Opened,
    clock: Arc<dyn Clock>,
    demo: bool,
) -> Result<Running, ServeError> {
    let signer = AnswerSigner::load_or_create(
        &settings.data_dir.join(AnswerSigner::FILE_NAME),
        random_seed,
    )?;
    let (secrets_file, new_admin_token) = SecretsFile::load_or_create(&settings.data_dir)?;
    // Serves at once: until the view has caught up, `/healthz` answers 503 `catching_up` and
    // requests that read the view wait for it.
    let log = match &settings.store_layer {
        Some(layer) => layer(store.store()),
        None => store.store(),
    };
    let mut config = settings.ledger.clone();
    if config.derived.dir.is_none() {
        config.derived = DerivedConfig::in_data_dir(&settings.data_dir);
    }
    let ledger = Arc::new(Ledger::open(log, clock, config).await?);
    let demo = if demo && ledger.head().await?.position == 0 {
        Some(super::demo::fill(&ledger, &secrets_file.secrets).await?)
    } else {
        if demo {
            tracing::info!("the store is not empty: serving it as is, without demo data");
        }
        None
    };
    let listener = TcpListener::bind(&settings.listen).map_err(|source| ServeError::Io {
        context: format!(
            "listening on {} (set --listen or LEDGER_LISTEN)",
            settings.listen
        ),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Io {
        context: "reading the listen address".into(),
        source,
    })?;
    let state = AppState {
        ledger: ledger.clone(),
        signer: Arc::new(signer),
        secrets: secrets_file.secrets.clone(),
        gate: Arc::new(http::auth::Gate {
            tokens: TokenTable::watching(&secrets_file.tokens, &settings.data_dir),
            limits: http::limits::RateLimits::default(),
            trusted_proxies: settings.trusted_proxies.clone(),
            streams: Default::default(),
        }),
        secrets_file: Mutex::new(secrets_file),
        answers: http::checkin::AnswerCache::default(),
        quotas: http::quotas::WriteQuotas::new(settings.quotas),
    };
    let server = http::server(state, listener, settings.workers, settings.tls.as_deref()).map_err(
        |source| ServeError::Io {
            context: "starting the server".into(),
            source,
        },
    )?;
    let handle = server.handle();
    let task = tokio::spawn(server);
    let last_seen = tokio::spawn(crate::app::last_seen::flush_every(
        Arc::downgrade(&ledger),
        crate::app::last_seen::FLUSH_EVERY,
    ));
    let renewals = settings
        .renewal_every
        .map(|every| tokio::spawn(crate::app::renewals::run(Arc::downgrade(&ledger), every)));
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, scheme, data_dir = %settings.data_dir.display(), "serving");
    Ok(Running {
        addr,
        scheme,
        new_admin_token,
        demo,
        handle,
        task,
        renewals,
        last_seen,
        store,
        ledger,
    })
}

/// Runs `serve` until SIGTERM or Ctrl-C; with `demo`, fills an empty store first.
pub fn run(settings: ServeSettings, demo: bool) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| ServeError::Io {
            context: "starting the runtime".into(),
            source,
        })?;
    runtime.block_on(async {
        let running = start_with(&settings, demo).await?;
        let url = format!("{}://{}", running.scheme, running.addr);
        let mut text = Vec::new();
        if let Some(summary) = &running.demo {
            let _ = summary.write(&mut text);
        } else if demo {
            let _ = writeln!(
                text,
                "the store is not empty: serving it as is (no demo data)"
            );
        }
        print!("{}", String::from_utf8_lossy(&text));
        println!("listening on {url}");
        match &running.new_admin_token {
            Some(token) => {
                println!("Created an admin API token (shown only this once; keep it safe):");
                println!("{token}");
                println!("try: curl -H 'Authorization: Bearer {token}' {url}/v1/licenses");
            }
            None => println!(
                "use a token from `license-ledger token create --role support`: \
                 curl -H 'Authorization: Bearer TOKEN' {url}/v1/licenses"
            ),
        }
        shutdown_signal().await;
        tracing::info!("shutting down");
        running.stop().await
    })
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The data directory from the flag or environment, else the config file, else `./data`.
pub fn resolve_data_dir(flag: Option<&Path>, file: Option<&Path>) -> PathBuf {
    flag.or(file)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(crate::config::DATA_DIR_DEFAULT))
}
