//! A throw-away PKI for mutual TLS (RFC 8705): a CA, a server certificate for 127.0.0.1 (the
//! test IdP's mTLS alias listener, the TLS echo upstream), a client certificate it issued
//! (`CN=cloakroom-test-client`, for `tls_client_auth`) and a self-signed one (for
//! `self_signed_tls_client_auth`), as PEM strings and files.

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use sha2::{Digest, Sha256};

/// The subject of the CA-issued client certificate, as the IdP compares it.
pub(crate) const CLIENT_DN: &str = "CN=cloakroom-test-client";

pub(crate) struct Pki {
    pub dir: std::path::PathBuf,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub client_der: Vec<u8>,
    pub self_signed_cert_pem: String,
    pub self_signed_key_pem: String,
    pub self_signed_der: Vec<u8>,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cloakroom-mtls-{}-{}",
            std::process::id(),
            super::redis::free_port()
        ));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("server cert");
        let client_key = KeyPair::generate().expect("key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cloakroom-test-client");
        client_params.distinguished_name = dn;
        let client = client_params
            .signed_by(&client_key, &ca)
            .expect("client cert");
        let ss_key = KeyPair::generate().expect("key");
        let mut ss_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cloakroom-self-signed");
        ss_params.distinguished_name = dn;
        let ss = ss_params.self_signed(&ss_key).expect("self-signed cert");
        let pki = Self {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
            client_der: client.der().to_vec(),
            self_signed_cert_pem: ss.pem(),
            self_signed_key_pem: ss_key.serialize_pem(),
            self_signed_der: ss.der().to_vec(),
            dir,
        };
        for (f, v) in [
            ("ca.pem", &pki.ca_pem),
            ("client.pem", &pki.client_cert_pem),
            ("self-signed.pem", &pki.self_signed_cert_pem),
        ] {
            std::fs::write(pki.dir.join(f), v).expect("write pem");
        }
        pki
    }

    pub(crate) fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    /// RFC 8705 `x5t#S256` of a certificate's DER.
    pub(crate) fn thumbprint(der: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
    }

    /// The public JWK of the self-signed certificate, with its `x5c`, to register at the IdP.
    pub(crate) fn self_signed_jwks(&self) -> serde_json::Value {
        let keys = cloakroom::oidc::ClientKey::parse_all(&self.self_signed_key_pem)
            .expect("self-signed key");
        let mut jwk = keys[0].public_jwk(None);
        jwk["x5c"] = serde_json::json!([
            base64::engine::general_purpose::STANDARD.encode(&self.self_signed_der)
        ]);
        serde_json::json!({ "keys": [jwk] })
    }
}
