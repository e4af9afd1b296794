//! The client certificate for mutual TLS (RFC 8705): client authentication at the IdP
//! (`tls_client_auth`, `self_signed_tls_client_auth`), certificate-bound access tokens, and the
//! same certificate presented to upstreams whose routes say `upstream_client_cert = true`.
//!
//! Read and checked by the configuration ([`ClientCert::load`]), so a bad certificate or key is
//! a start-up error naming `oidc.client_cert_file` or `CLOAKROOM_OIDC_CLIENT_CERT_KEY`.
//! `reqwest` presents it to the IdP ([`ClientCert::identity`]); `rustls` (through
//! `hyper-rustls`) to upstreams ([`ClientCert::rustls`]). Never logs the key.

use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// A client certificate chain (leaf first) and its private key.
#[derive(Clone)]
pub struct ClientCert {
    /// Certificate PEM followed by the key PEM, as `reqwest::Identity::from_pem` reads it.
    pem: Secret,
    chain: Vec<CertificateDer<'static>>,
    key: Secret,
    /// RFC 8705 §3.1: base64url SHA-256 of the leaf's DER (`x5t#S256`).
    thumbprint: String,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("x5t#S256", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// Reads the certificate chain `cert_pem` (leaf first) and its private key `key_pem`.
    ///
    /// # Errors
    /// What is wrong, naming which of the two (never their bytes).
    pub fn load(cert_pem: &[u8], key_pem: &str) -> Result<Self, (&'static str, String)> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ("cert", format!("not a PEM certificate chain ({e})")))?;
        let Some(leaf) = chain.first() else {
            return Err(("cert", "no CERTIFICATE block in it".into()));
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| ("key", format!("not a PEM private key ({e})")))?;
        // The key must be the leaf's (rustls compares the public key info).
        let provider = tokio_rustls::rustls::crypto::ring::default_provider();
        tokio_rustls::rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider).map_err(
            |e| {
                (
                    "key",
                    format!("not the certificate's key, or unusable ({e})"),
                )
            },
        )?;
        let mut pem = String::from_utf8_lossy(cert_pem).into_owned();
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(key_pem.trim());
        pem.push('\n');
        reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
            (
                "key",
                format!("the certificate and key cannot be used together ({e})"),
            )
        })?;
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(leaf.as_ref()));
        Ok(Self {
            pem: Secret::new(pem),
            chain,
            key: Secret::new(key_pem.trim().to_string()),
            thumbprint,
        })
    }

    /// The identity `reqwest` presents to the IdP.
    ///
    /// # Errors
    /// Never for a certificate [`ClientCert::load`] accepted.
    pub fn identity(&self) -> Result<reqwest::Identity, reqwest::Error> {
        reqwest::Identity::from_pem(self.pem.expose().as_bytes())
    }

    /// The chain and key for a `rustls` client configuration.
    ///
    /// # Errors
    /// Never for a certificate [`ClientCert::load`] accepted.
    pub fn rustls(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let key = PrivateKeyDer::from_pem_slice(self.key.expose().as_bytes())
            .map_err(|e| format!("client certificate key ({e})"))?;
        Ok((self.chain.clone(), key))
    }

    /// The leaf's `x5t#S256` (what certificate-bound tokens carry in `cnf`).
    #[must_use]
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }
}
