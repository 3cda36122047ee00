//! `relay`: runs an on-premises relay for one customer (see [`crate::relay`]);
//! `relay-status`: asks a running relay how it is doing.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger_events::Cnpj;

use super::{parse_flag, CliError};
use crate::clock::Clock;
use crate::config::{FileConfig, SecretsFile};
use crate::http::auth::Gate;
use crate::http::TokenTable;
use crate::relay::{Relay, RelayConfig};

/// Options of `relay` (each may also come from the config file's `[relay]` table).
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// The center's base URL, e.g. https://licencas.example.com (https:// only, unless
    /// --allow-insecure-upstream).
    #[arg(long, env = "LEDGER_RELAY_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// Extra PEM root certificate(s) to check the center's certificate against: the center's
    /// own self-signed certificate, or its private CA's (public CAs are trusted anyway).
    #[arg(long, env = "LEDGER_RELAY_UPSTREAM_CA", value_name = "PEM")]
    pub upstream_ca: Option<PathBuf>,
    /// The center's Ed25519 public key (64 hex digits, `GET /v1/keys` at the center), to pin
    /// before first contact; without it the key the center presents first is pinned
    /// (`center-key.json`). Mirrored records must carry the center's signed head under it.
    #[arg(long, env = "LEDGER_RELAY_CENTER_KEY", value_name = "HEX")]
    pub center_key: Option<String>,
    /// Accept a plain http:// --upstream: the relay token and the center's records then cross
    /// the network unprotected. For loopback testing only.
    #[arg(long)]
    pub allow_insecure_upstream: bool,
    /// The customer this relay serves.
    #[arg(long, env = "LEDGER_RELAY_CNPJ", value_name = "CNPJ")]
    pub cnpj: Option<String>,
    /// The center's `relay` token for that customer (`token create --role relay --cnpj`).
    #[arg(
        long,
        env = "LEDGER_RELAY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Address and port terminals reach the relay on [default: 127.0.0.1:8023].
    #[arg(long, env = "LEDGER_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Serve the terminals HTTPS with this PEM certificate chain; needs --tls-key.
    /// Without both: plain HTTP.
    #[arg(long, env = "LEDGER_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LEDGER_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

/// Options of `relay-status`.
#[derive(Debug, clap::Args)]
pub struct RelayStatusArgs {
    /// The relay's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8023", value_name = "URL")]
    pub url: String,
    /// Extra PEM root certificate for an https:// --url with a self-signed or private-CA
    /// certificate.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// A support, auditor or admin token of the relay (its own `secrets.toml`).
    #[arg(
        long,
        env = "LEDGER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: String,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

fn required(flag: &'static str, value: Option<String>, hint: &str) -> Result<String, CliError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or(CliError::Input {
            flag,
            message: format!("required: {hint} (or set it under [relay] in the config file)"),
        })
}

/// Runs the relay until SIGTERM or Ctrl-C.
pub fn run(
    data_dir: &Path,
    args: RelayArgs,
    file: &FileConfig,
    clock: Arc<dyn Clock>,
    workers: usize,
    calendar: crate::domain::Calendar,
) -> Result<(), CliError> {
    let from_file = file.relay.clone().unwrap_or_default();
    let upstream = required(
        "--upstream",
        args.upstream.or(from_file.upstream),
        "the center's URL",
    )?;
    let allow_insecure =
        args.allow_insecure_upstream || from_file.allow_insecure_upstream == Some(true);
    crate::tls::check_upstream_url(&upstream, allow_insecure).map_err(|message| {
        CliError::Input {
            flag: "--upstream",
            message,
        }
    })?;
    if upstream.trim().to_ascii_lowercase().starts_with("http://") {
        tracing::warn!(%upstream, "--allow-insecure-upstream: the center is reached over plain HTTP (loopback testing only)");
    }
    let upstream_roots = match args.upstream_ca.or(from_file.upstream_ca) {
        Some(path) => crate::tls::upstream_roots(&path)?,
        None => Vec::new(),
    };
    let tls = crate::tls::from_flags(
        args.tls_cert.or(from_file.tls_cert),
        args.tls_key.or(from_file.tls_key),
    )?;
    let cnpj = required(
        "--cnpj",
        args.cnpj.or(from_file.cnpj),
        "the customer's CNPJ",
    )?;
    let cnpj = parse_flag(
        "--cnpj",
        &cnpj,
        Cnpj::parse,
        "pass the customer's 14-character CNPJ",
    )?;
    let token = required(
        "--token",
        args.token.or(from_file.token),
        "the center's relay token for this customer",
    )?;
    let listen = args
        .listen
        .or(from_file.listen)
        .unwrap_or_else(|| crate::config::LISTEN_DEFAULT.to_owned());
    let center_key =
        match args.center_key.or(from_file.center_key) {
            Some(hex) => Some(crate::relay::trust::CenterKey::from_hex(&hex).map_err(|e| {
                CliError::Input {
                    flag: "--center-key",
                    message: format!("{e}; pass the public_key of the center's GET /v1/keys"),
                }
            })?),
            None => None,
        };
    let mut config = RelayConfig::new(&upstream, cnpj, &token, data_dir.to_owned());
    config.calendar = calendar;
    config.upstream_roots = upstream_roots;
    config.center_key = center_key;
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let relay =
            Arc::new(Relay::open(config, clock).map_err(|e| CliError::Refused(e.to_string()))?);
        let (secrets, new_admin) = SecretsFile::load_or_create(data_dir)?;
        let gate = Arc::new(Gate {
            tokens: TokenTable::watching(&secrets.tokens, data_dir),
            limits: crate::http::limits::RateLimits::default(),
            trusted_proxies: super::trusted_proxies(file)?,
            streams: Default::default(),
        });
        let listener = TcpListener::bind(&listen).map_err(|e| CliError::Input {
            flag: "--listen",
            message: format!("cannot listen on {listen}: {e}"),
        })?;
        let addr = listener.local_addr().map_err(|e| CliError::Input {
            flag: "--listen",
            message: format!("cannot read the listen address: {e}"),
        })?;
        let server =
            crate::relay::http::server(relay.clone(), gate, listener, workers, tls.as_deref())?;
        let handle = server.handle();
        let serving = tokio::spawn(server);
        let tasks = relay.spawn();
        tracing::info!(%addr, %upstream, %cnpj, "relay serving");
        println!("relay for {cnpj} of {upstream}");
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("listening on {scheme}://{addr}");
        if let Some(token) = new_admin {
            println!("Created an admin token of this relay (shown only this once; keep it safe):");
            println!("{token}");
        }
        super::serve::shutdown_signal().await;
        tracing::info!("relay shutting down");
        handle.stop(true).await;
        let _ = serving.await;
        for t in tasks {
            t.abort();
        }
        Ok(())
    })
}

/// Prints a running relay's status.
pub fn status(args: &RelayStatusArgs, out: &mut impl Write) -> Result<(), CliError> {
    let runtime = super::runtime()?;
    let mut client = reqwest::Client::builder();
    if let Some(path) = &args.ca {
        for der in crate::tls::upstream_roots(path).map_err(|e| CliError::Input {
            flag: "--ca",
            message: e.message,
        })? {
            let cert = reqwest::Certificate::from_der(&der).map_err(|e| CliError::Input {
                flag: "--ca",
                message: e.to_string(),
            })?;
            client = client.add_root_certificate(cert);
        }
    }
    let client = client
        .build()
        .map_err(|e| CliError::Failed(format!("cannot build an HTTP client: {e}")))?;
    let status: serde_json::Value = runtime.block_on(async {
        let res = client
            .get(format!(
                "{}/v1/relay/status",
                args.url.trim_end_matches('/')
            ))
            .bearer_auth(&args.token)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| {
                CliError::Failed(format!("cannot reach the relay at {}: {e}", args.url))
            })?;
        let code = res.status();
        let body: serde_json::Value = res
            .json()
            .await
            .map_err(|e| CliError::Failed(format!("the relay's answer is not JSON: {e}")))?;
        if !code.is_success() {
            return Err(CliError::Failed(format!(
                "the relay refused ({code}): {}",
                body["message"].as_str().unwrap_or("no message")
            )));
        }
        Ok(body)
    })?;
    if args.json {
        writeln!(out, "{status}")?;
        return Ok(());
    }
    let field = |name: &str| match &status[name] {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    for (label, name) in [
        ("customer", "cnpj"),
        ("upstream", "upstream"),
        ("link", "link"),
        ("last successful refresh", "last_refresh"),
        ("next refresh or retry", "next_refresh"),
        ("last error", "last_error"),
        ("contingency since", "contingency_since"),
        ("outbox depth", "outbox_depth"),
        ("rejected by the center", "rejected"),
        ("mirror position", "mirror_position"),
        ("mirror records", "mirror_records"),
        ("mirroring stopped", "mirror_error"),
        ("key certified until", "certified_until"),
    ] {
        writeln!(out, "{label}: {}", field(name))?;
    }
    Ok(())
}
