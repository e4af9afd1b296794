//! An echo upstream: answers with what it received (method, path, headers), and a few special
//! paths: `/slow/*` (waits 3 s), `/download/<bytes>` (streams a deterministic body),
//! `/upload` (hashes the streamed body), `/setcookie/*` (answers with [`SET_COOKIES`] and
//! `Clear-Site-Data`, on a WebSocket `101` too), `/cached/*` (its own `Cache-Control`),
//! `/sse/*` (one server-sent event, then silence), `/dpop-nonce/*` (a resource server that
//! wants a DPoP nonce, RFC 9449 §9: a proof without its current one gets `401
//! WWW-Authenticate: DPoP error="use_dpop_nonce"` and `DPoP-Nonce`; `/dpop-nonce/upload` then
//! hashes the body like `/upload`), `/checked/*` (a resource server's check of the token
//! ([`rs_check`]): its binding found by introspection at the test IdP, a DPoP proof verified
//! in full, a certificate-bound token compared with the TLS client certificate; anything else
//! is `401 invalid_token`). Counts every request.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

#[derive(Default)]
pub(crate) struct Seen {
    pub count: AtomicUsize,
    /// Every request's path, in order of arrival (the first 10,000).
    pub paths: Mutex<Vec<String>>,
    pub last: Mutex<Option<serde_json::Value>>,
    /// Every `Authorization` value received, in order (the last 10,000).
    pub authorizations: Mutex<Vec<String>>,
    /// `/dpop-nonce/*`: the generation of the nonce it wants (`up-nonce-<n>`); a test bumps it
    /// to make the upstream ask again.
    pub dpop_nonce: AtomicUsize,
    /// `/dpop-nonce/*`: how many requests it refused for want of the current nonce.
    pub dpop_nonce_refused: AtomicUsize,
    /// Over TLS ([`Upstream::start_tls`]): the `x5t#S256` of the client certificate of each
    /// connection, in order.
    pub peer_certs: Mutex<Vec<String>>,
    /// `/checked/*`: the IdP's introspection endpoint (set by the test support once the IdP
    /// runs); the resource server authenticates there as [`RS_CLIENT_ID`].
    pub introspection: Mutex<Option<String>>,
    /// `/checked/*`: the DPoP proof `jti`s seen (a replay is refused).
    pub jtis: Mutex<std::collections::HashSet<String>>,
    /// `/stepup/<acr>/*`: how many requests it answered with an RFC 9470 challenge.
    pub step_up_challenges: AtomicUsize,
}

/// The resource server's client at the test IdP (introspection only).
pub(crate) const RS_CLIENT_ID: &str = "resource-server";
/// Its secret.
pub(crate) const RS_CLIENT_SECRET: &str = "resource-server-secret-0123456789";

/// What `/setcookie/*` answers with, and whether Cloakroom must pass each on (the test
/// config's cookie names are `__Host-cloakroom` and `__Host-cloakroom-login`).
pub(crate) const SET_COOKIES: [(&str, bool); 16] = [
    ("__Host-cloakroom=evil1; Path=/; Secure; HttpOnly", false),
    ("__Secure-cloakroom=evil2; Path=/; Secure", false),
    ("cloakroom=evil3; Path=/", false),
    ("__HOST-CloakRoom=evil4; Path=/; Secure", false),
    ("  __host-cloakroom  =evil5", false),
    ("__Host-cloakroom=; Max-Age=0; Path=/; Secure", false),
    ("__Host-cloakroom", false),
    ("__Host-cloakroom-login=evil6; Path=/; Secure", false),
    ("__Host-cloakroom-login-3fa9c1=evil7; Path=/; Secure", false),
    ("cloakroom-LOGIN-x=evil8", false),
    ("__secure-cloakroom-login-y=evil9", false),
    ("app=1; Path=/", true),
    ("cloakroomx=2; Path=/", true),
    ("__Host-cloakroom-loginx=3; Path=/; Secure", true),
    ("cloakroom-other=4", true),
    ("__Host-app-cloakroom=5; Path=/; Secure", true),
];

pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

/// The deterministic byte at offset `i` of a download.
pub(crate) fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(i >> 13) % 251) as u8
}

impl Upstream {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(s.clone(), stream, None));
            }
        });
        Self { addr, seen, task }
    }

    /// The echo over TLS (a server certificate from `pki`), refusing any connection without a
    /// client certificate `pki`'s CA issued: an upstream that checks certificate-bound tokens.
    pub(crate) async fn start_tls(pki: &super::pki::Pki) -> Self {
        use rustls_pki_types::pem::PemObject;
        use tokio_rustls::rustls;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(c.expect("ca")).expect("ca");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let chain: Vec<_> =
            rustls_pki_types::CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
                .map(|c| c.expect("cert"))
                .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes())
            .expect("key");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|der| Arc::new(super::pki::Pki::thumbprint(der.as_ref())));
                    if let Some(p) = &peer {
                        s.peer_certs.lock().expect("lock").push(p.to_string());
                    }
                    serve(s, tls, peer).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// Whether any request so far was for `path`.
    pub(crate) fn saw_path(&self, path: &str) -> bool {
        self.seen
            .paths
            .lock()
            .expect("lock")
            .iter()
            .any(|p| p == path)
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.count.load(Ordering::SeqCst)
    }

    /// Every `Authorization` value received since `from` (an index into the history).
    pub(crate) fn authorizations_since(&self, from: usize) -> Vec<String> {
        let a = self.seen.authorizations.lock().expect("lock");
        a.get(from..).map(<[String]>::to_vec).unwrap_or_default()
    }

    /// How many `Authorization` values were received so far.
    pub(crate) fn authorizations_seen(&self) -> usize {
        self.seen.authorizations.lock().expect("lock").len()
    }

    pub(crate) fn last(&self) -> serde_json::Value {
        self.seen
            .last
            .lock()
            .expect("lock")
            .clone()
            .expect("the upstream saw a request")
    }
}

/// Serves one connection with the echo; `peer_cert` is its TLS client certificate's
/// `x5t#S256`.
async fn serve<I>(seen: Arc<Seen>, io: I, peer_cert: Option<Arc<String>>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(seen.clone(), req, peer_cert.clone()));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A resource server's check of the request's token (RFC 9449 §7.1, RFC 8705 §3): the
/// binding comes from introspection at the IdP. A DPoP-bound token must come as `DPoP` with a
/// proof signed by the bound key for this method and URL, with `ath`, a fresh `iat` and a `jti`
/// never seen before; a certificate-bound one with the bound certificate on the connection; a
/// bearer token as `Bearer`. Returns the binding (`dpop`, `cert` or `none`).
pub(crate) async fn rs_check<B>(
    seen: &Seen,
    req: &hyper::Request<B>,
    peer_cert: Option<&str>,
) -> Result<&'static str, String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization")?;
    let (scheme, token) = auth.split_once(' ').ok_or("malformed Authorization")?;
    let endpoint = seen
        .introspection
        .lock()
        .expect("lock")
        .clone()
        .ok_or("no introspection endpoint configured")?;
    let info: serde_json::Value = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| e.to_string())?
        .post(endpoint)
        .basic_auth(RS_CLIENT_ID, Some(RS_CLIENT_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .map_err(|e| format!("introspection: {e}"))?
        .json()
        .await
        .map_err(|e| format!("introspection: {e}"))?;
    if info["active"] != true {
        return Err(format!("token not active: {info}"));
    }
    if let Some(x5t) = info["cnf"]["x5t#S256"].as_str() {
        if peer_cert != Some(x5t) {
            return Err("certificate-bound token without its certificate".into());
        }
        return Ok("cert");
    }
    let Some(jkt) = info["cnf"]["jkt"].as_str() else {
        return if scheme.eq_ignore_ascii_case("bearer") {
            Ok("none")
        } else {
            Err(format!("{scheme} scheme for a bearer token"))
        };
    };
    if !scheme.eq_ignore_ascii_case("dpop") {
        return Err("DPoP-bound token sent as a bearer token".into());
    }
    let proof = req
        .headers()
        .get("dpop")
        .and_then(|v| v.to_str().ok())
        .ok_or("no DPoP proof")?;
    let header = jsonwebtoken::decode_header(proof).map_err(|e| format!("proof header: {e}"))?;
    if header.typ.as_deref() != Some("dpop+jwt") || header.alg != jsonwebtoken::Algorithm::ES256 {
        return Err("proof typ or alg".into());
    }
    let jwk = header.jwk.ok_or("proof without jwk")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| format!("proof jwk: {e}"))?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(proof, &key, &v)
        .map_err(|e| format!("proof signature: {e}"))?
        .claims;
    if claims["htm"] != req.method().as_str() {
        return Err("proof htm".into());
    }
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let scheme = if peer_cert.is_some() { "https" } else { "http" };
    if claims["htu"] != format!("{scheme}://{host}{}", req.uri().path()).as_str() {
        return Err(format!("proof htu {}", claims["htu"]));
    }
    let ath = b64.encode(Sha256::digest(token.as_bytes()));
    if claims["ath"] != ath.as_str() {
        return Err("proof ath".into());
    }
    let now = cloakroom::session::now_unix();
    if claims["iat"]
        .as_i64()
        .is_none_or(|iat| (iat - now).abs() > 60)
    {
        return Err("proof iat not fresh".into());
    }
    let jti = claims["jti"]
        .as_str()
        .ok_or("proof without jti")?
        .to_string();
    if !seen.jtis.lock().expect("lock").insert(jti) {
        return Err("proof replayed (jti seen before)".into());
    }
    let thumbprint = jwk
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .map_err(|e| format!("thumbprint: {e}"))?;
    if thumbprint != jkt {
        return Err("proof key is not the token's (cnf.jkt)".into());
    }
    Ok("dpop")
}

async fn handle(
    seen: Arc<Seen>,
    mut req: hyper::Request<hyper::body::Incoming>,
    peer_cert: Option<Arc<String>>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    seen.count.fetch_add(1, Ordering::SeqCst);
    {
        let mut paths = seen.paths.lock().expect("lock");
        if paths.len() < 10_000 {
            paths.push(req.uri().path().to_string());
        }
    }
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "websocket")
    {
        // An upgraded connection that echoes whatever bytes it receives.
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = hyper::Response::new(full(""));
        if req.uri().path().contains("/setcookie") {
            add_set_cookies(resp.headers_mut());
        }
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", "websocket".parse().expect("static"));
        resp.headers_mut()
            .insert("connection", "upgrade".parse().expect("static"));
        *seen.last.lock().expect("lock") = Some(serde_json::json!({
            "path": req.uri().path(),
            "authorization": req.headers().get("authorization").is_some(),
            "cookie": req.headers().get("cookie").is_some(),
        }));
        return Ok(resp);
    }
    let path = req.uri().path().to_string();
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.as_str().to_string(),
            serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
        );
    }
    let info = serde_json::json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
        "authorization_count": req.headers().get_all("authorization").iter().count(),
        "cookie_count": req.headers().get_all("cookie").iter().count(),
    });
    *seen.last.lock().expect("lock") = Some(info.clone());
    if let Some(a) = req.headers().get("authorization") {
        let mut all = seen.authorizations.lock().expect("lock");
        if all.len() < 10_000 {
            all.push(String::from_utf8_lossy(a.as_bytes()).into_owned());
        }
    }

    if path.contains("/dpop-nonce") {
        let want = format!("up-nonce-{}", seen.dpop_nonce.load(Ordering::SeqCst));
        let got = req
            .headers()
            .get("dpop")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.split('.').nth(1))
            .and_then(|c| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
            })
            .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
            .and_then(|c| c["nonce"].as_str().map(String::from));
        if got.as_deref() != Some(want.as_str()) {
            seen.dpop_nonce_refused.fetch_add(1, Ordering::SeqCst);
            // Read (and drop) the body first, so the client sees the 401, not a reset.
            let _ = req.into_body().collect().await;
            let mut resp = hyper::Response::new(full(r#"{"error":"use_dpop_nonce"}"#));
            *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
            resp.headers_mut().insert(
                "www-authenticate",
                r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#
                    .parse()
                    .expect("static"),
            );
            resp.headers_mut()
                .insert("dpop-nonce", want.parse().expect("nonce"));
            return Ok(resp);
        }
    }
    // What the token says, for JWT access tokens (RFC 9068): read, not verified (a test
    // upstream); and the token's hash, to match it with what the IdP was asked to revoke.
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').map(|(_, t)| t.to_string()));
    let claims = bearer.as_deref().and_then(jwt_claims);
    // `/stepup/<acr>/…`: an API that wants that `acr`, and says so the RFC 9470 way.
    if let Some(want) = path
        .split_once("/stepup/")
        .and_then(|(_, rest)| rest.split('/').next())
        .filter(|a| !a.is_empty())
    {
        let got = claims
            .as_ref()
            .and_then(|c| c["acr"].as_str().map(String::from));
        if got.as_deref() != Some(want) {
            seen.step_up_challenges.fetch_add(1, Ordering::SeqCst);
            let mut resp =
                hyper::Response::new(full(r#"{"error":"insufficient_user_authentication"}"#));
            *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
            resp.headers_mut().insert(
                "www-authenticate",
                format!(r#"Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="{want}""#)
                    .parse()
                    .expect("challenge"),
            );
            return Ok(resp);
        }
    }
    // `/fake-login-401`: an API that answers like Cloakroom's own "log in again" 401, with
    // Cloakroom's mark on it and a login URL elsewhere (what an SPA client must not follow).
    if path.contains("/fake-login-401") {
        let mut resp = hyper::Response::new(full(
            r#"{"error":"unauthenticated","login_url":"https://evil.example/auth/login?prompt=none"}"#,
        ));
        *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
        let h = resp.headers_mut();
        h.insert("content-type", "application/json".parse().expect("static"));
        h.append(
            "x-cloakroom-error",
            "unauthenticated".parse().expect("static"),
        );
        h.append(
            "x-cloakroom-error",
            "step_up_required".parse().expect("static"),
        );
        return Ok(resp);
    }
    // `/challenge/…`: an API that always wants a login at most a minute old (RFC 9470).
    if path.contains("/challenge/") {
        seen.step_up_challenges.fetch_add(1, Ordering::SeqCst);
        let mut resp =
            hyper::Response::new(full(r#"{"error":"insufficient_user_authentication"}"#));
        *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
        resp.headers_mut().insert(
            "www-authenticate",
            r#"Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age="60""#
                .parse()
                .expect("static"),
        );
        return Ok(resp);
    }
    let mut rs = None;
    if path.contains("/checked/") {
        match rs_check(&seen, &req, peer_cert.as_deref().map(String::as_str)).await {
            Ok(binding) => rs = Some(binding),
            Err(why) => {
                let body = serde_json::json!({"error": "invalid_token", "why": why});
                let mut resp = hyper::Response::new(full(body.to_string()));
                *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                return Ok(resp);
            }
        }
    }
    if path.contains("/sse") {
        // One event, then nothing: the stream stays open until the proxy ends it.
        let first = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"data: hello\n\n")))
        });
        let body = BodyExt::boxed(StreamBody::new(
            first.chain(futures_util::stream::pending()),
        ));
        let mut resp = hyper::Response::new(body);
        resp.headers_mut().insert(
            "content-type",
            "text/event-stream; charset=utf-8".parse().expect("static"),
        );
        return Ok(resp);
    }
    if path.contains("/slow") {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    if let Some(n) = path
        .rsplit_once("/download/")
        .map(|(_, n)| n.parse::<u64>().unwrap_or(0))
    {
        const CHUNK: u64 = 64 * 1024;
        let stream = futures_util::stream::iter((0..n.div_ceil(CHUNK)).map(move |c| {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(n);
            let v: Vec<u8> = (start..end).map(pattern).collect();
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(v)))
        }));
        let body = BodyExt::boxed(StreamBody::new(stream));
        return Ok(hyper::Response::new(body));
    }
    if path.ends_with("/upload") {
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut body = req.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            len += chunk.len() as u64;
            hasher.update(&chunk);
        }
        let out = serde_json::json!({"len": len, "sha256": hex(&hasher.finalize())});
        return Ok(hyper::Response::new(full(out.to_string())));
    }
    // The echo never reflects credentials: the browser-side scan must only catch our leaks.
    let mut echoed = info.clone();
    if let Some(c) = &claims {
        let pick = |k: &str| c.get(k).cloned().unwrap_or(serde_json::Value::Null);
        echoed["token_claims"] = serde_json::json!({
            "aud": pick("aud"), "sub": pick("sub"), "client_id": pick("client_id"),
            "acr": pick("acr"), "auth_time": pick("auth_time"), "scope": pick("scope"),
            "act": pick("act"), "iss": pick("iss"),
        });
    }
    if let Some(t) = &bearer {
        echoed["token_sha256"] = serde_json::Value::String(hex(&Sha256::digest(t.as_bytes())));
    }
    if let Some(binding) = rs {
        echoed["rs_check"] = serde_json::json!({"ok": true, "binding": binding});
    }
    if let Some(h) = echoed["headers"].as_object_mut() {
        for k in ["authorization", "cookie", "dpop"] {
            if h.contains_key(k) {
                h.insert(k.into(), serde_json::Value::String("<present>".into()));
            }
        }
    }
    let mut resp = hyper::Response::new(full(echoed.to_string()));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    if path.contains("/setcookie") {
        add_set_cookies(resp.headers_mut());
    }
    if path.contains("/cached") {
        resp.headers_mut().insert(
            "cache-control",
            "public, max-age=60".parse().expect("static"),
        );
    }
    Ok(resp)
}

fn add_set_cookies(h: &mut hyper::HeaderMap) {
    for (c, _) in SET_COOKIES {
        h.append("set-cookie", c.parse().expect("static"));
    }
    h.append("clear-site-data", "\"cookies\"".parse().expect("static"));
    h.append("clear-site-data", "\"*\"".parse().expect("static"));
}

/// The payload of a JWT, unverified; `None` for an opaque token.
pub(crate) fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
