//! HTTPS: the rustls server configuration of `serve` and `relay` (`--tls-cert`/`--tls-key`),
//! and the extra root certificates a relay trusts its center with (`--upstream-ca`).
//!
//! One crypto provider everywhere: rustls's `ring`, the one reqwest already uses. Loading
//! fails with a [`TlsError`] naming the flag and what to pass instead; the command line turns
//! it into exit code 2 (see `cli`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate chain flag.
pub const CERT_FLAG: &str = "--tls-cert";
/// The private key flag.
pub const KEY_FLAG: &str = "--tls-key";
/// The relay's extra upstream root certificates.
pub const UPSTREAM_CA_FLAG: &str = "--upstream-ca";

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct TlsError {
    /// The flag (or configuration key) whose value is wrong.
    pub flag: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn error(flag: &'static str, message: String) -> TlsError {
    TlsError { flag, message }
}

/// The process-wide crypto provider: rustls with `ring`.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of the PEM file `path` (at least one).
fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| {
        error(
            flag,
            format!(
                "cannot read {}: {e}; pass a readable PEM file of certificates",
                path.display()
            ),
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            error(
                flag,
                format!(
                    "{} is not valid PEM ({e}); pass a PEM file of certificates \
                     (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ),
            )
        })?;
    if certs.is_empty() {
        return Err(error(
            flag,
            format!(
                "{} holds no certificate; pass a PEM file with at least one \
                 -----BEGIN CERTIFICATE----- block",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The server configuration for `cert` (a PEM chain, the server's own certificate first) and
/// `key` (its PEM private key: PKCS#8, PKCS#1 or SEC1). Checks that the key is the
/// certificate's.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = read_certs(CERT_FLAG, cert)?;
    let key_bytes = std::fs::read(key).map_err(|e| {
        error(
            KEY_FLAG,
            format!(
                "cannot read {}: {e}; pass a readable PEM private key file",
                key.display()
            ),
        )
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        error(
            KEY_FLAG,
            format!(
                "{} holds no usable private key ({e}); pass the certificate's key as PEM \
                 (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
                key.display()
            ),
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(CERT_FLAG, format!("no TLS version available: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            error(
                KEY_FLAG,
                format!(
                    "{} does not go with the certificate in {} ({e}); pass the private key \
                     the certificate was issued for",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
    // actix-web is built without HTTP/2 here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `--tls-cert` and `--tls-key` together: both (HTTPS), or neither (plain HTTP). One without
/// the other is refused, naming the missing one.
pub fn from_flags(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => server_config(&cert, &key).map(|c| Some(Arc::new(c))),
        (Some(_), None) => Err(error(
            KEY_FLAG,
            "required with --tls-cert: pass the certificate's PEM private key too (or neither, \
             for plain HTTP)"
                .into(),
        )),
        (None, Some(_)) => Err(error(
            CERT_FLAG,
            "required with --tls-key: pass the PEM certificate chain too (or neither, for \
             plain HTTP)"
                .into(),
        )),
    }
}

/// The extra root certificates in the PEM file `path` (`--upstream-ca`), as DER: a center
/// with a self-signed or private-CA certificate is trusted through them, besides the usual
/// public roots.
pub fn upstream_roots(path: &Path) -> Result<Vec<Vec<u8>>, TlsError> {
    let certs = read_certs(UPSTREAM_CA_FLAG, path)?;
    for cert in &certs {
        reqwest::Certificate::from_der(cert.as_ref()).map_err(|e| {
            error(
                UPSTREAM_CA_FLAG,
                format!(
                    "{}: a certificate is not usable as a root ({e}); pass the PEM \
                     certificate of the center or of the CA that issued it",
                    path.display()
                ),
            )
        })?;
    }
    Ok(certs.into_iter().map(|c| c.as_ref().to_vec()).collect())
}

/// Whether a relay may use `url` as its center: `https://` always; `http://` only with
/// `allow_insecure` (`--allow-insecure-upstream`, for loopback testing); anything else never.
pub fn check_upstream_url(url: &str, allow_insecure: bool) -> Result<(), String> {
    let lower = url.trim().to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("https://") {
        if rest.is_empty() {
            return Err(format!(
                "{url:?} names no host; pass e.g. https://licencas.example.com"
            ));
        }
        return Ok(());
    }
    if lower.starts_with("http://") {
        if allow_insecure {
            return Ok(());
        }
        return Err(format!(
            "{url} is plain HTTP: the relay's token and the center's records would cross the \
             network unprotected; use an https:// URL (with --upstream-ca for a private \
             certificate), or pass --allow-insecure-upstream (for loopback testing)"
        ));
    }
    Err(format!(
        "{url:?} is not an http(s) URL; pass the center's base URL, e.g. \
         https://licencas.example.com"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_upstreams_pass_unless_insecure_is_allowed() {
        assert!(check_upstream_url("https://c.example", false).is_ok());
        assert!(check_upstream_url("HTTPS://c.example", false).is_ok());
        let err = check_upstream_url("http://127.0.0.1:8023", false).unwrap_err();
        assert!(err.contains("https://"), "{err}");
        assert!(err.contains("--allow-insecure-upstream"), "{err}");
        assert!(check_upstream_url("http://127.0.0.1:8023", true).is_ok());
        assert!(check_upstream_url("ftp://c.example", true).is_err());
        assert!(check_upstream_url("c.example", true).is_err());
        assert!(check_upstream_url("https://", false).is_err());
    }

    #[test]
    fn one_flag_without_the_other_names_the_missing_one() {
        let e = from_flags(Some("c.pem".into()), None).unwrap_err();
        assert_eq!(e.flag, KEY_FLAG);
        let e = from_flags(None, Some("k.pem".into())).unwrap_err();
        assert_eq!(e.flag, CERT_FLAG);
        assert!(from_flags(None, None).unwrap().is_none());
    }

    #[test]
    fn a_missing_or_non_pem_certificate_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &missing).unwrap_err();
        assert_eq!(e.flag, CERT_FLAG);
        assert!(e.message.contains("cannot read"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = server_config(&junk, &junk).unwrap_err();
        assert_eq!(e.flag, CERT_FLAG);
        assert!(e.message.contains("no certificate"), "{e}");
        let e = upstream_roots(&junk).unwrap_err();
        assert_eq!(e.flag, UPSTREAM_CA_FLAG);
    }
}
