//! A hand-written, misbehaving OpenID provider (issue #7): a real IdP won't sign a bad token on
//! demand, this one does. Serves discovery, a JWKS of ES256 keys, and a token endpoint that
//! answers whatever the test put in `reply`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::KeyPair;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What `/token` answers next.
#[derive(Clone)]
pub(crate) enum Reply {
    /// Status and JSON body.
    Json(u16, serde_json::Value),
    /// Status and raw bytes (malformed or oversized bodies).
    Raw(u16, Vec<u8>),
    /// Wait, then answer.
    Slow(Duration, serde_json::Value),
}

pub(crate) struct Key {
    pub kid: String,
    pub pair: KeyPair,
}

impl Key {
    pub(crate) fn new(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            pair: KeyPair::generate().expect("P-256 key"),
        }
    }

    pub(crate) fn jwk(&self) -> serde_json::Value {
        let raw = self.pair.public_key_raw();
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        })
    }

    /// An ES256 JWT of `claims` signed by this key, with `kid` in the header.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(claims, &self.kid)
    }

    pub(crate) fn sign_as(&self, claims: &serde_json::Value, kid: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.pair.serialize_der());
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }
}

/// An HS256 JWT keyed with `secret` (the classic algorithm-confusion forgeries).
pub(crate) fn sign_hs256(claims: &serde_json::Value, secret: &[u8], kid: Option<&str>) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// An unsigned JWT (`alg: none`).
pub(crate) fn unsigned(claims: &serde_json::Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{h}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

pub(crate) struct State {
    /// Keys published at `/jwks`.
    pub published: Vec<serde_json::Value>,
    pub reply: Reply,
    pub jwks_fetches: usize,
    pub token_requests: usize,
    pub promise_iss: bool,
    /// How long `/jwks` takes to answer.
    pub jwks_delay: Duration,
}

pub(crate) struct HostileIdp {
    pub issuer: String,
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

impl HostileIdp {
    pub(crate) async fn start(keys: &[&Key], promise_iss: bool) -> Self {
        Self::start_with(keys, promise_iss, false).await
    }

    /// With `trailing_slash`, the issuer identifier ends in `/` (Auth0 style); the endpoints
    /// stay at the root.
    pub(crate) async fn start_with(keys: &[&Key], promise_iss: bool, trailing_slash: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let issuer = if trailing_slash {
            format!("{base}/")
        } else {
            base.clone()
        };
        let state = Arc::new(Mutex::new(State {
            published: keys.iter().map(|k| k.jwk()).collect(),
            reply: Reply::Json(500, serde_json::json!({"error": "server_error"})),
            jwks_fetches: 0,
            token_requests: 0,
            promise_iss,
            jwks_delay: Duration::ZERO,
        }));
        let (st, iss) = (state.clone(), (issuer.clone(), base));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, iss) = (st.clone(), iss.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), iss.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            issuer,
            state,
            task,
        }
    }

    pub(crate) fn set_reply(&self, r: Reply) {
        self.state.lock().expect("lock").reply = r;
    }

    pub(crate) fn publish(&self, keys: &[&Key]) {
        self.state.lock().expect("lock").published = keys.iter().map(|k| k.jwk()).collect();
    }

    pub(crate) fn jwks_fetches(&self) -> usize {
        self.state.lock().expect("lock").jwks_fetches
    }

    pub(crate) fn token_requests(&self) -> usize {
        self.state.lock().expect("lock").token_requests
    }
}

fn reply(status: u16, body: Vec<u8>) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    r
}

async fn handle(
    state: Arc<Mutex<State>>,
    (issuer, base): (String, String),
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/.well-known/openid-configuration" => {
            let promise = state.lock().expect("lock").promise_iss;
            let doc = serde_json::json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{base}/authorize"),
                "token_endpoint": format!("{base}/token"),
                "jwks_uri": format!("{base}/jwks"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "authorization_response_iss_parameter_supported": promise,
            });
            reply(200, doc.to_string().into_bytes())
        }
        "/jwks" => {
            let (doc, delay) = {
                let mut s = state.lock().expect("lock");
                s.jwks_fetches += 1;
                (serde_json::json!({ "keys": s.published }), s.jwks_delay)
            };
            tokio::time::sleep(delay).await;
            reply(200, doc.to_string().into_bytes())
        }
        "/token" => {
            let _ = req.into_body().collect().await;
            let r = {
                let mut s = state.lock().expect("lock");
                s.token_requests += 1;
                s.reply.clone()
            };
            match r {
                Reply::Json(status, v) => reply(status, v.to_string().into_bytes()),
                Reply::Raw(status, b) => reply(status, b),
                Reply::Slow(d, v) => {
                    tokio::time::sleep(d).await;
                    reply(200, v.to_string().into_bytes())
                }
            }
        }
        _ => reply(404, b"{}".to_vec()),
    };
    Ok(resp)
}
