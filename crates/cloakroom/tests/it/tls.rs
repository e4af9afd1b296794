//! TLS (issue #5): the optional rustls public listener, and `rediss://` to a TLS redis-server.

use crate::support::browser::Browser;
use crate::support::redis::{free_port, RedisServer};
use crate::support::{bind0, TestEnv};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::time::Duration;

/// A throw-away CA and a server certificate for localhost / 127.0.0.1, as PEM files.
struct Pki {
    dir: std::path::PathBuf,
    ca_pem: String,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cloakroom-pki-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Self {
            ca_pem: ca.pem(),
            dir,
        }
    }
    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

#[tokio::test]
async fn the_public_listener_speaks_tls() {
    let pki = Pki::new();
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let listener = bind0();
    let port = listener.local_addr().unwrap().port();
    let config = env.config(
        port,
        &env.keys,
        &format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.path("cert.pem"),
            pki.path("key.pem")
        ),
    );
    let app = cloakroom::App::start_with(
        config,
        cloakroom::Listeners {
            public: Some(listener),
            admin: Some(bind0()),
            ..Default::default()
        },
    )
    .await
    .expect("start with TLS");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", app.public_addr.port());
    let r = client
        .get(format!("{base}/public/tls"))
        .send()
        .await
        .expect("TLS request");
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/api/tls"))
        .header("x-csrf", "1")
        .header(
            "cookie",
            format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a session over TLS");
    // Plain HTTP to the TLS port gets nowhere.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(plain
        .get(format!(
            "http://127.0.0.1:{}/public/x",
            app.public_addr.port()
        ))
        .send()
        .await
        .is_err());
    // A bad certificate path is a start-up error naming the key.
    let bad = env.config(
        0,
        &env.keys,
        "[server.tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
    );
    let err = cloakroom::App::start_with(
        bad,
        cloakroom::Listeners {
            public: Some(bind0()),
            admin: Some(bind0()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("server.tls.cert_file"), "{err}");
    app.shutdown().await;
}

#[tokio::test]
async fn rediss_to_a_tls_redis_server() {
    let pki = Pki::new();
    let port = free_port();
    // A TLS-only redis-server: plain port off.
    let server = RedisServer::start_tls(
        port,
        &[
            "--tls-port",
            &port.to_string(),
            "--port",
            "0",
            "--tls-cert-file",
            &pki.path("cert.pem"),
            "--tls-key-file",
            &pki.path("key.pem"),
            "--tls-ca-cert-file",
            &pki.path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    let store = cloakroom::session::redis::RedisStore::connect_to(
        &cloakroom::session::redis::Topology::Single(format!("rediss://localhost:{}", server.port)),
        Some(pki.ca_pem.as_bytes()),
        "tls",
        Duration::from_secs(2),
    )
    .await
    .expect("rediss:// connect");
    cloakroom::session::conformance::run(cloakroom::session::Store::Redis(store)).await;
}
