//! TLS termination with rustls: certificate and key from PEM files, ALPN offering HTTP/2
//! (what Composer uses over TLS) and HTTP/1.1.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

pub fn acceptor(files: &TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| {
            format!(
                "invalid setting `tls_cert`: cannot read {}",
                files.cert.display()
            )
        })?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "invalid setting `tls_cert`: bad PEM in {}",
                files.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "invalid setting `tls_cert`: no certificate in {}",
            files.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| {
        format!(
            "invalid setting `tls_key`: no usable private key in {}",
            files.key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("invalid setting `tls_key`: it does not match the certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
