//! How Cloakroom authenticates to the IdP as a client: a client secret (Basic or in the body)
//! or `private_key_jwt` (RFC 7523 §2.2, OIDC Core §9), at the token, revocation and PAR
//! endpoints.
//!
//! The signing keys are parsed and checked by the configuration ([`ClientKey::parse_all`]),
//! so a bad key is a start-up error naming `CLOAKROOM_OIDC_CLIENT_KEY`; the algorithm is chosen
//! at discovery from the key and the IdP's `token_endpoint_auth_signing_alg_values_supported`
//! ([`Signer::new`]). `jsonwebtoken` does the signing, the public JWK and its RFC 7638
//! thumbprint (the default `kid`). Never logs a key or an assertion.

use crate::config::ClientAuth;
use crate::secret::Secret;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// `client_assertion_type` for a JWT (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client assertion is valid: short, it is used at once (and `jti` is fresh).
const ASSERTION_LIFETIME: i64 = 60;

/// What kind of key a [`ClientKey`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, at least 2048 bits: PS256, or RS256 when the IdP offers nothing better.
    Rsa,
    /// EC P-256: ES256.
    P256,
    /// Ed25519: EdDSA.
    Ed25519,
}

/// One private key for `private_key_jwt`, with its public JWK.
#[derive(Clone)]
pub struct ClientKey {
    key: EncodingKey,
    kind: KeyKind,
    /// The public JWK (no `alg`, no `kid`), to register at the IdP.
    public: serde_json::Value,
    /// Its RFC 7638 SHA-256 thumbprint.
    thumbprint: String,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("kind", &self.kind)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// Every private key in `pem`, in order: the first signs, the others are there while the
    /// IdP's registration changes over (rotation). Either PEM blocks (PKCS#8, or PKCS#1 for
    /// RSA; text between them is ignored), or JSON: one private JWK or a JWK set `{"keys":
    /// [...]}`.
    ///
    /// # Errors
    /// What is wrong with which key (never its bytes).
    pub fn parse_all(pem: &str) -> Result<Vec<Self>, String> {
        if pem.trim_start().starts_with('{') {
            return Self::parse_jwks(pem);
        }
        let mut keys = Vec::new();
        let mut rest = pem;
        while let Some(start) = rest.find("-----BEGIN ") {
            let block = &rest[start..];
            let Some(end_marker) = block.find("-----END ") else {
                return Err(format!(
                    "key {}: a PEM block without its END line",
                    keys.len() + 1
                ));
            };
            let end = block[end_marker..]
                .find("\n")
                .map_or(block.len(), |i| end_marker + i + 1);
            keys.push(
                Self::parse_one(&block[..end])
                    .map_err(|why| format!("key {}: {why}", keys.len() + 1))?,
            );
            rest = &block[end..];
        }
        if keys.is_empty() {
            return Err("no PEM private key in it".into());
        }
        Ok(keys)
    }

    fn parse_one(pem: &str) -> Result<Self, String> {
        let bytes = pem.as_bytes();
        let (key, kind) = if let Some(der) = ed25519_v1(pem) {
            (EncodingKey::from_ed_der(&der), KeyKind::Ed25519)
        } else if let Ok(k) = EncodingKey::from_ec_pem(bytes) {
            (k, KeyKind::P256)
        } else if let Ok(k) = EncodingKey::from_rsa_pem(bytes) {
            (k, KeyKind::Rsa)
        } else {
            return Err("not an RSA, EC P-256 or Ed25519 private key in PEM".into());
        };
        Self::from_key(key, kind)
    }

    /// Private JWKs: one, or a set.
    fn parse_jwks(json: &str) -> Result<Vec<Self>, String> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("not a JWK or JWK set ({e})"))?;
        let list = match v.get("keys") {
            Some(serde_json::Value::Array(keys)) => keys.clone(),
            Some(_) => return Err("`keys` is not an array".into()),
            None => vec![v],
        };
        if list.is_empty() {
            return Err("an empty JWK set".into());
        }
        list.iter()
            .enumerate()
            .map(|(i, jwk)| Self::from_jwk(jwk).map_err(|why| format!("key {}: {why}", i + 1)))
            .collect()
    }

    /// One private JWK, turned into the DER `jsonwebtoken` signs with; its public half must
    /// match the private one.
    fn from_jwk(jwk: &serde_json::Value) -> Result<Self, String> {
        let field = |name: &str| -> Result<Vec<u8>, String> {
            let s = jwk[name]
                .as_str()
                .ok_or_else(|| format!("a JWK without `{name}` (a private key is needed)"))?;
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s)
                .map_err(|_| format!("a JWK whose `{name}` is not base64url"))
        };
        let (key, kind) = match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
            (Some("OKP"), Some("Ed25519")) => {
                let d = field("d")?;
                if d.len() != 32 {
                    return Err("an Ed25519 JWK whose `d` is not 32 bytes".into());
                }
                let mut der = ED25519_V1.to_vec();
                der.extend_from_slice(&d);
                (EncodingKey::from_ed_der(&der), KeyKind::Ed25519)
            }
            (Some("EC"), Some("P-256")) => {
                use p256::pkcs8::EncodePrivateKey;
                let secret = p256::SecretKey::from_slice(&field("d")?)
                    .map_err(|_| "an EC JWK whose `d` is not a P-256 private key".to_string())?;
                let der = secret
                    .to_pkcs8_der()
                    .map_err(|e| format!("cannot encode the EC key ({e})"))?;
                (EncodingKey::from_ec_der(der.as_bytes()), KeyKind::P256)
            }
            (Some("RSA"), _) => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                let int = |name: &str| field(name).map(|b| rsa::BigUint::from_bytes_be(&b));
                let key = rsa::RsaPrivateKey::from_components(
                    int("n")?,
                    int("e")?,
                    int("d")?,
                    vec![int("p")?, int("q")?],
                )
                .map_err(|e| format!("an RSA JWK that is not a valid key ({e})"))?;
                let der = key
                    .to_pkcs1_der()
                    .map_err(|e| format!("cannot encode the RSA key ({e})"))?;
                (EncodingKey::from_rsa_der(der.as_bytes()), KeyKind::Rsa)
            }
            _ => return Err("not an RSA, EC P-256 or Ed25519 JWK".into()),
        };
        let key = Self::from_key(key, kind)?;
        // The public half given must be this key's.
        for (name, given) in jwk.as_object().into_iter().flatten() {
            if ["n", "e", "x", "y"].contains(&name.as_str()) && key.public.get(name) != Some(given)
            {
                return Err(format!(
                    "a JWK whose `{name}` does not match its private key"
                ));
            }
        }
        Ok(key)
    }

    fn from_key(key: EncodingKey, kind: KeyKind) -> Result<Self, String> {
        let probe = match kind {
            KeyKind::Rsa => Algorithm::PS256,
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        };
        let jwk = Jwk::from_encoding_key(&key, probe)
            .map_err(|e| format!("cannot read its public key ({e})"))?;
        match (&jwk.algorithm, kind) {
            (AlgorithmParameters::EllipticCurve(p), KeyKind::P256)
                if p.curve != EllipticCurve::P256 =>
            {
                return Err("an EC key on a curve other than P-256".into());
            }
            (AlgorithmParameters::RSA(p), KeyKind::Rsa) => {
                let n =
                    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &p.n)
                        .map_err(|_| "an RSA key whose modulus cannot be read".to_string())?;
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < 2048 {
                    return Err(format!("an RSA key of {bits} bits (at least 2048 needed)"));
                }
            }
            _ => {}
        }
        let thumbprint = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("cannot compute its thumbprint ({e})"))?;
        let mut public = serde_json::to_value(&jwk.algorithm)
            .map_err(|e| format!("cannot write its public JWK ({e})"))?;
        if let Some(o) = public.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        Ok(Self {
            key,
            kind,
            public,
            thumbprint,
        })
    }

    /// A new private key of `kind` (EC P-256 or Ed25519), as PKCS#8 PEM: what
    /// `cloakroom keygen --client-key` prints.
    ///
    /// # Errors
    /// For RSA (generate one with openssl), or when generation fails.
    pub fn generate_pem(kind: KeyKind) -> Result<String, String> {
        let alg = match kind {
            KeyKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::Rsa => return Err("RSA keys are not generated here".into()),
        };
        rcgen::KeyPair::generate_for(alg)
            .map(|k| k.serialize_pem())
            .map_err(|e| format!("cannot generate a key: {e}"))
    }

    /// The kind of key.
    #[must_use]
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The RFC 7638 thumbprint (SHA-256, base64url).
    #[must_use]
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public JWK to register at the IdP, with `kid` (the thumbprint unless `kid` is
    /// given), `use` and the `alg` this key signs with when the IdP offers it.
    #[must_use]
    pub fn public_jwk(&self, kid: Option<&str>) -> serde_json::Value {
        let mut jwk = self.public.clone();
        if let Some(o) = jwk.as_object_mut() {
            o.insert(
                "kid".into(),
                kid.unwrap_or(&self.thumbprint).to_string().into(),
            );
            o.insert("use".into(), "sig".into());
            o.insert(
                "alg".into(),
                match self.kind {
                    KeyKind::Rsa => "PS256",
                    KeyKind::P256 => "ES256",
                    KeyKind::Ed25519 => "EdDSA",
                }
                .into(),
            );
        }
        jwk
    }
}

/// The 16 bytes before the seed in a version-1 PKCS#8 Ed25519 key (RFC 8410 §7).
const ED25519_V1: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 PKCS#8 key as the version-1 DER `jsonwebtoken` reads (16 bytes of header and
/// the 32-byte seed), from a v1 or a v2 (RFC 8410, with the public key: what ring and
/// OpenSSL 3 write) `PRIVATE KEY` block; `None` for anything else.
fn ed25519_v1(pem: &str) -> Option<Vec<u8>> {
    const V1: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    if !pem.trim_start().starts_with("-----BEGIN PRIVATE KEY-----") {
        return None;
    }
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).ok()?;
    // The algorithm identifier (1.3.101.112) and the seed's OCTET STRING follow a version
    // (0 or 1) in both forms: the seed is the 32 bytes after that shared header.
    let header = der.get(5..16)?;
    if der.first() != Some(&0x30) || header != &V1[5..16] || der.len() < 48 {
        return None;
    }
    let mut v1 = V1.to_vec();
    v1.extend_from_slice(&der[16..48]);
    Some(v1)
}

/// The JWS algorithm for `kind`, from what the IdP offers (`None`: it does not say).
///
/// # Errors
/// When the IdP offers none this key can make.
pub(super) fn choose_alg(kind: KeyKind, offered: Option<&[String]>) -> Result<Algorithm, String> {
    let offers = |a: &str| offered.is_none_or(|o| o.iter().any(|x| x == a));
    let listed = || offered.map(|o| o.join(", ")).unwrap_or_default();
    match kind {
        // PS256 first; RS256 only when nothing better is offered (or nothing is said).
        KeyKind::Rsa if offered.is_some_and(|o| o.iter().any(|x| x == "PS256")) => {
            Ok(Algorithm::PS256)
        }
        KeyKind::Rsa if offers("RS256") => Ok(Algorithm::RS256),
        KeyKind::P256 if offers("ES256") => Ok(Algorithm::ES256),
        KeyKind::Ed25519 if offers("EdDSA") || offers("Ed25519") => Ok(Algorithm::EdDSA),
        _ => Err(format!(
            "the IdP's token_endpoint_auth_signing_alg_values_supported ({}) has no algorithm for the configured {kind:?} client key",
            listed()
        )),
    }
}

/// Signs client assertions: the first configured key, its algorithm and `kid`, and the
/// audience.
#[derive(Clone)]
pub struct Signer {
    key: ClientKey,
    alg: Algorithm,
    kid: String,
    audience: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `key` with `alg`, `kid` (its thumbprint unless given) and `audience`.
    #[must_use]
    pub fn new(key: ClientKey, alg: Algorithm, kid: Option<String>, audience: String) -> Self {
        let kid = kid.unwrap_or_else(|| key.thumbprint.clone());
        Self {
            key,
            alg,
            kid,
            audience,
        }
    }

    /// The algorithm it signs with.
    #[must_use]
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// A fresh client assertion for `client_id` at `now` (unix seconds).
    ///
    /// # Errors
    /// When signing fails (a key jsonwebtoken read but cannot use).
    pub fn assertion(&self, client_id: &str, now: i64) -> Result<Secret, String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": self.audience,
            "jti": crate::crypto::random_token(),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        jsonwebtoken::encode(&header, &claims, &self.key.key)
            .map(Secret::new)
            .map_err(|e| format!("cannot sign the client assertion ({e})"))
    }
}

/// The client's credentials, for every call that authenticates the client.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `client_secret_basic`.
    Basic(Secret),
    /// `client_secret_post`.
    Post(Secret),
    /// `private_key_jwt`.
    PrivateKeyJwt(Signer),
    /// `tls_client_auth` or `self_signed_tls_client_auth` (RFC 8705): the certificate on the
    /// connection authenticates; the body names the client.
    Mtls(ClientAuth),
}

impl Credentials {
    /// The configured method, with `signer` when it is `private_key_jwt`.
    #[must_use]
    pub fn new(method: ClientAuth, secret: &Secret, signer: Option<Signer>) -> Self {
        match (method, signer) {
            (ClientAuth::PrivateKeyJwt, Some(s)) => Self::PrivateKeyJwt(s),
            (m @ (ClientAuth::TlsClientAuth | ClientAuth::SelfSignedTlsClientAuth), _) => {
                Self::Mtls(m)
            }
            (ClientAuth::Post, _) => Self::Post(secret.clone()),
            _ => Self::Basic(secret.clone()),
        }
    }

    /// The form fields that authenticate the client in a request body (`client_id` included
    /// where the method needs it), and the Basic credentials to send, if any. `now` is the
    /// assertion's `iat`.
    ///
    /// # Errors
    /// When an assertion cannot be signed.
    pub fn apply(
        &self,
        client_id: &str,
        form: &mut Vec<(String, String)>,
        now: i64,
    ) -> Result<Option<(String, String)>, String> {
        let has_id = form.iter().any(|(k, _)| k == "client_id");
        let mut id = || {
            if !has_id {
                form.push(("client_id".into(), client_id.into()));
            }
        };
        match self {
            // RFC 6749 §2.3.1: both parts form-encoded before they are joined.
            Self::Basic(secret) => {
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                Ok(Some((enc(client_id), enc(secret.expose()))))
            }
            Self::Post(secret) => {
                id();
                form.push(("client_secret".into(), secret.expose().to_string()));
                Ok(None)
            }
            Self::Mtls(_) => {
                id();
                Ok(None)
            }
            Self::PrivateKeyJwt(signer) => {
                id();
                let jwt = signer.assertion(client_id, now)?;
                form.push(("client_assertion_type".into(), ASSERTION_TYPE.into()));
                form.push(("client_assertion".into(), jwt.expose().to_string()));
                Ok(None)
            }
        }
    }

    /// Adds this client's authentication to `builder` with `form` as its body.
    ///
    /// # Errors
    /// When an assertion cannot be signed.
    pub fn request(
        &self,
        builder: reqwest::RequestBuilder,
        client_id: &str,
        mut form: Vec<(String, String)>,
        now: i64,
    ) -> Result<reqwest::RequestBuilder, String> {
        let basic = self.apply(client_id, &mut form, now)?;
        let builder = match basic {
            Some((user, pass)) => builder.basic_auth(user, Some(pass)),
            None => builder,
        };
        Ok(builder.form(&form))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_algorithm_follows_the_key_and_what_the_idp_offers() {
        let offered = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rsa = offered(&["RS256", "PS256"]);
        assert_eq!(choose_alg(KeyKind::Rsa, Some(&rsa)), Ok(Algorithm::PS256));
        let old = offered(&["RS256"]);
        assert_eq!(choose_alg(KeyKind::Rsa, Some(&old)), Ok(Algorithm::RS256));
        assert_eq!(choose_alg(KeyKind::Rsa, None), Ok(Algorithm::RS256));
        assert_eq!(choose_alg(KeyKind::P256, None), Ok(Algorithm::ES256));
        let ed = offered(&["Ed25519"]);
        assert_eq!(
            choose_alg(KeyKind::Ed25519, Some(&ed)),
            Ok(Algorithm::EdDSA)
        );
        let err = choose_alg(KeyKind::P256, Some(&old)).unwrap_err();
        assert!(
            err.contains("token_endpoint_auth_signing_alg_values_supported"),
            "{err}"
        );
    }

    fn b64(b: &[u8]) -> String {
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
    }

    fn der_of(pem: &str) -> Vec<u8> {
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN"))
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap()
    }

    /// The same key as PEM and as a private JWK reads as the same key (same thumbprint), and a
    /// JWK whose public half is another key's is refused.
    fn same_key_both_ways(pem: &str, private_jwk: serde_json::Value) {
        let from_pem = &ClientKey::parse_all(pem).unwrap()[0];
        let from_jwk = &ClientKey::parse_all(&private_jwk.to_string()).unwrap()[0];
        assert_eq!(from_pem.thumbprint(), from_jwk.thumbprint());
        assert_eq!(from_pem.kind(), from_jwk.kind());
        let set = serde_json::json!({ "keys": [private_jwk.clone(), private_jwk.clone()] });
        assert_eq!(ClientKey::parse_all(&set.to_string()).unwrap().len(), 2);
        let mut wrong = private_jwk.clone();
        let field = if wrong.get("y").is_some() {
            "y"
        } else if wrong.get("n").is_some() {
            "e"
        } else {
            "x"
        };
        wrong[field] = b64(b"\x03").into();
        let err = ClientKey::parse_all(&wrong.to_string()).unwrap_err();
        assert!(err.starts_with("key 1:"), "{err}");
        let mut public_only = private_jwk;
        public_only.as_object_mut().unwrap().remove("d");
        let err = ClientKey::parse_all(&public_only.to_string()).unwrap_err();
        assert!(err.contains("without `d`"), "{err}");
    }

    #[test]
    fn keys_read_as_jwks_are_the_same_keys_as_in_pem() {
        // Ed25519: the seed follows the 16-byte PKCS#8 header.
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem();
        let public = ClientKey::parse_all(&pem).unwrap()[0].public.clone();
        let d = b64(&der_of(&pem)[16..48]);
        same_key_both_ways(
            &pem,
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "d": d, "x": public["x"]}),
        );

        // EC P-256.
        use p256::pkcs8::DecodePrivateKey;
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let secret = p256::SecretKey::from_pkcs8_der(&der_of(&pem)).unwrap();
        let public = ClientKey::parse_all(&pem).unwrap()[0].public.clone();
        same_key_both_ways(
            &pem,
            serde_json::json!({
                "kty": "EC", "crv": "P-256", "d": b64(&secret.to_bytes()), "x": public["x"], "y": public["y"],
            }),
        );

        // RSA.
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        let pem = include_str!("../../tests/it/fixtures/test-client-rsa-2048.pem");
        let key = rsa::RsaPrivateKey::from_pkcs8_der(&der_of(pem)).unwrap();
        let p = key.primes();
        same_key_both_ways(
            pem,
            serde_json::json!({
                "kty": "RSA",
                "n": b64(&key.n().to_bytes_be()),
                "e": b64(&key.e().to_bytes_be()),
                "d": b64(&key.d().to_bytes_be()),
                "p": b64(&p[0].to_bytes_be()),
                "q": b64(&p[1].to_bytes_be()),
            }),
        );
    }

    #[test]
    fn garbage_and_small_keys_are_refused_by_what_they_are() {
        assert!(ClientKey::parse_all("").unwrap_err().contains("no PEM"));
        let bad = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = ClientKey::parse_all(bad).unwrap_err();
        assert!(err.starts_with("key 1: not an RSA"), "{err}");
    }
}
