//! The provider-behaviour matrix (issue #17, first part): one core suite — login, an API call
//! with the session's token, a refresh, logout with revocation where the IdP has it, and the
//! no-token-in-browser scan — run against `oidc-provider` in each configuration where real
//! IdPs differ. `second_idp.rs` runs the same suite ([`core`]) against django-oauth-toolkit.

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv};
use reqwest::Method;
use std::time::Duration;

/// What the configuration under test does at the IdP.
#[derive(Clone, Copy)]
pub(crate) struct Expect {
    /// The IdP rotates refresh tokens on every use.
    pub rotates: bool,
    /// The IdP has a revocation endpoint.
    pub revocation: bool,
    /// The ID tokens' signing algorithm.
    pub alg: &'static str,
    /// The access token is a JWT (RFC 9068) with this audience, not an opaque string.
    pub jwt_aud: Option<&'static str>,
    /// `sub` is the IdP's local user id (else a pairwise identifier).
    pub public_sub: bool,
    /// The session has the profile claims (`name`, `email`).
    pub profile: bool,
}

pub(crate) const USUAL: Expect = Expect {
    rotates: true,
    revocation: true,
    alg: "RS256",
    jwt_aud: None,
    public_sub: true,
    profile: true,
};

fn with_idp(pairs: &[(&str, serde_json::Value)]) -> Opts {
    let mut o = Opts {
        access_token_ttl: 600,
        ..Opts::default()
    };
    for (k, v) in pairs {
        o.idp_extra.insert((*k).into(), v.clone());
    }
    o
}

async fn metric(env: &TestEnv, name: &str) -> f64 {
    crate::support::metric_sum(env.apps[0].admin_addr, name).await
}

/// What [`core`] leaves behind, for checks of a provider's own after the logout.
pub(crate) struct CoreRun {
    pub env: TestEnv,
    pub browser: Browser,
    /// The logout's answer (`{"end_session_url", "ended"}`).
    pub logout: serde_json::Value,
    /// The session as it was last, before the logout.
    pub last: cloakroom::session::Session,
}

/// The core suite, on a fresh environment (against either IdP: `Opts::provider`).
pub(crate) async fn core(opts: Opts, expect: Expect) -> CoreRun {
    let env = TestEnv::start_with(opts).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let s = env.session_of(&b).await.expect("a session");
    let rt = s.tokens.refresh_token.clone().expect("a refresh token");
    assert_eq!(
        s.sub == env.sub_of("alice"),
        expect.public_sub,
        "sub {}",
        s.sub
    );
    assert_eq!(id_token_alg(&s), expect.alg, "the ID token's algorithm");
    let at_claims = crate::support::upstream::jwt_claims(s.tokens.access_token.expose());
    assert_eq!(
        at_claims.as_ref().map(|c| c["aud"].clone()),
        expect.jwt_aud.map(serde_json::Value::from),
        "the access token's form: {at_claims:?}"
    );

    let user = b.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_eq!(
        user["claims"]["name"] == "Alice Liddell"
            && user["claims"]["email"] == "alice@example.test",
        expect.profile,
        "profile claims: {user}"
    );

    // An API call carries the session's own access token.
    let seen = env.upstream.authorizations_seen();
    let r = b.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        env.upstream.authorizations_since(seen),
        vec![format!("Bearer {}", s.tokens.access_token.expose())]
    );

    // Past its lifetime: one refresh, a new token upstream, the refresh token rotated or not
    // as the IdP does it.
    env.advance(Duration::from_secs(700));
    let r = b.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.refresh_grants().await, 1);
    let after = env.session_of(&b).await.expect("still a session");
    assert_ne!(
        after.tokens.access_token.expose(),
        s.tokens.access_token.expose()
    );
    assert_eq!(after.sub, s.sub, "the same user after a refresh");
    let new_rt = after.tokens.refresh_token.clone().expect("a refresh token");
    assert_eq!(
        new_rt.expose() != rt.expose(),
        expect.rotates,
        "refresh token rotation"
    );
    // And again (a kept refresh token is still good; a rotated one was replaced).
    env.advance(Duration::from_secs(700));
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert_eq!(env.refresh_reuses().await, 0);
    let last = env.session_of(&b).await.expect("still a session");

    // Before logout the browser has seen no token at all (the logout answer then carries the
    // ID token as the end-session URL's id_token_hint, by design).
    for x in [&s, &after, &last] {
        assert!(
            !b.received.contains(x.tokens.id_token.expose()),
            "an ID token reached the browser"
        );
    }
    // Logout ends the session; the tokens are revoked where the IdP can.
    let unavailable = metric(&env, "cloakroom_revocation_unavailable_total").await;
    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let logout = r.json();
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 401);
    if expect.revocation {
        env.wait_rt_revoked(last.tokens.refresh_token.as_ref().expect("rt").expose())
            .await;
    } else {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metric(&env, "cloakroom_revocation_unavailable_total").await <= unavailable {
            assert!(
                std::time::Instant::now() < deadline,
                "no revocation endpoint, and no metric saying so"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(env.revocations().await, 0);
    }

    // No access or refresh token ever reached the browser.
    for t in [&s, &after, &last].iter().flat_map(|x| {
        std::iter::once(&x.tokens.access_token).chain(x.tokens.refresh_token.as_ref())
    }) {
        assert!(
            !b.received.contains(t.expose()),
            "a token reached the browser"
        );
    }
    CoreRun {
        env,
        browser: b,
        logout,
        last,
    }
}

#[tokio::test]
async fn rs256_with_rotation_and_reuse_detection() {
    core(with_idp(&[]), USUAL).await;
}

#[tokio::test]
async fn es256_id_tokens() {
    core(
        with_idp(&[("signing_alg", "ES256".into())]),
        Expect {
            alg: "ES256",
            ..USUAL
        },
    )
    .await;
}

#[tokio::test]
async fn eddsa_id_tokens() {
    core(
        with_idp(&[("signing_alg", "EdDSA".into())]),
        Expect {
            alg: "EdDSA",
            ..USUAL
        },
    )
    .await;
}

#[tokio::test]
async fn refresh_tokens_that_do_not_rotate() {
    core(
        with_idp(&[("rotate_refresh_token", false.into())]),
        Expect {
            rotates: false,
            ..USUAL
        },
    )
    .await;
}

#[tokio::test]
async fn no_revocation_endpoint() {
    core(
        with_idp(&[("revocation", false.into())]),
        Expect {
            revocation: false,
            ..USUAL
        },
    )
    .await;
}

#[tokio::test]
async fn jwt_access_tokens() {
    core(
        with_idp(&[("jwt_access_tokens", true.into())]),
        Expect {
            jwt_aud: Some("urn:cloakroom:test-api"),
            ..USUAL
        },
    )
    .await;
}

#[tokio::test]
async fn an_issuer_with_a_trailing_slash() {
    core(with_idp(&[("issuer_trailing_slash", true.into())]), USUAL).await;
}

#[tokio::test]
async fn pairwise_subject_identifiers() {
    core(
        with_idp(&[("pairwise", true.into())]),
        Expect {
            public_sub: false,
            ..USUAL
        },
    )
    .await;
}

#[tokio::test]
async fn claims_only_at_userinfo() {
    let mut o = with_idp(&[("claims_at_userinfo", true.into())]);
    // Without oidc.userinfo the session has only what the ID token says...
    core(
        o.clone(),
        Expect {
            profile: false,
            ..USUAL
        },
    )
    .await;
    // ... with it, the userinfo endpoint's claims too.
    o.oidc_toml = "userinfo = true".into();
    core(o, USUAL).await;
}

/// Issue #30 item 9: the userinfo endpoint adds profile claims, never protocol ones. The IdP's
/// userinfo answers a forged `acr`, `amr`, `auth_time`, `sid`, `cnf` and the ID token's own
/// validity claims (none of which its ID token carries, or with other values): the session
/// keeps the ID token's (or none), so a route that wants the forged `acr` still asks for a
/// step-up.
#[tokio::test]
async fn userinfo_never_supplies_protocol_claims() {
    const FORGED_ACR: &str = "urn:forged:loa:9";
    let forged = serde_json::json!({
        "acr": FORGED_ACR, "amr": ["hwk", "mfa"], "auth_time": 4_102_444_800_i64,
        "sid": "forged-sid", "cnf": {"jkt": "forged"}, "iss": "https://evil.example",
        "aud": "someone-else", "exp": 4_102_444_800_i64, "iat": 1, "nbf": 4_102_444_800_i64,
        "nonce": "forged", "azp": "someone-else", "at_hash": "forged", "c_hash": "forged",
        "s_hash": "forged", "jti": "forged", "nickname": "Al",
    });
    let mut o = with_idp(&[("userinfo_claims", forged.clone())]);
    o.oidc_toml = "userinfo = true".into();
    o.extra_toml = format!(
        "[[routes]]\nprefix = \"/gold/\"\nupstream = \"http://@UPSTREAM@\"\nacr_values = [\"{FORGED_ACR}\"]\n"
    );
    let env = TestEnv::start_with(o).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let s = env.session_of(&b).await.expect("a session");
    assert_eq!(
        s.claims["nickname"], "Al",
        "the userinfo merge ran: {:?}",
        s.claims
    );
    for (k, v) in forged.as_object().expect("object") {
        if k != "nickname" {
            assert_ne!(
                s.claims.get(k),
                Some(v),
                "{k} taken from userinfo: {:?}",
                s.claims
            );
        }
    }
    assert_eq!(s.sid.as_deref().filter(|sid| *sid == "forged-sid"), None);
    let user = b.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_ne!(user["acr"], FORGED_ACR, "{user}");
    let r = b.xhr(Method::GET, &env.url("/gold/x")).await;
    assert_eq!(
        r.status, 401,
        "the forged acr satisfied the route: {}",
        r.body
    );
    assert_eq!(r.json()["error"], "step_up_required");
}

/// No refresh token granted (no `offline_access`): the session lasts while its access token
/// does, then ends; with `silent_login` the 401 names a silent re-authentication, which
/// brings a new session without the user typing anything while the IdP session lives.
#[tokio::test]
async fn no_refresh_token_granted() {
    for silent in [false, true] {
        let mut o = with_idp(&[]);
        o.oidc_toml = r#"scopes = ["openid", "profile", "email"]"#.into();
        if silent {
            o.session_toml = r#"without_refresh_token = "silent_login""#.into();
        }
        let env = TestEnv::start_with(o).await;
        let mut b = Browser::new();
        env.login(&mut b).await;
        let s = env.session_of(&b).await.expect("a session");
        assert!(
            s.tokens.refresh_token.is_none(),
            "no offline_access, no refresh token"
        );
        assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
        env.advance(Duration::from_secs(590));
        assert_eq!(
            b.xhr(Method::GET, &env.url("/api/x")).await.status,
            200,
            "used while it lasts"
        );
        env.advance(Duration::from_secs(20));
        let r = b.xhr(Method::GET, &env.url("/api/x")).await;
        assert_eq!(r.status, 401, "{}", r.body);
        let v = r.json();
        assert_eq!(v["error"], "unauthenticated");
        assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 0);
        if !silent {
            assert!(v["login_url"].is_null(), "{v}");
            continue;
        }
        let login_url = v["login_url"].as_str().expect("login_url");
        assert_eq!(login_url, "/auth/login?prompt=none");
        // The SPA navigates there: the IdP's session answers without a login form.
        let r = b
            .get(&env.url(&format!("{login_url}&return_to=/app/page")))
            .await;
        assert_eq!(r.status, 302, "{}", r.body);
        let callback = env.follow_back(&mut b, &r.location()).await;
        let r = b.get(&callback).await;
        assert_eq!(r.status, 302, "{}", r.body);
        assert_eq!(r.location(), "/app/page");
        assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    }
}

fn id_token_alg(s: &cloakroom::session::Session) -> String {
    let header = s
        .tokens
        .id_token
        .expose()
        .split('.')
        .next()
        .expect("header");
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
            .expect("base64"),
    )
    .expect("json");
    header["alg"].as_str().unwrap_or_default().to_string()
}

/// The IdP switches to a new signing key in the middle of live sessions (the new key appears
/// in its JWKS only then), then drops the old one: refreshed ID tokens under the new key are
/// verified (one JWKS re-fetch for the unknown `kid`), sessions go on, new logins work.
#[tokio::test]
async fn a_signing_key_rotation_in_the_middle_of_live_sessions() {
    let env = TestEnv::start_with(with_idp(&[("key_rotation", true.into())])).await;
    let rotate = |step: &'static str| {
        let url = env.idp.url(&format!("/test/rotate-keys?step={step}"));
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .send()
                .await
                .expect("rotate");
            assert_eq!(r.status(), 200);
        }
    };
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(
        id_token_alg(&env.session_of(&b).await.expect("session")),
        "RS256"
    );

    rotate("switch").await;
    env.advance(Duration::from_secs(700));
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    let s = env.session_of(&b).await.expect("session");
    assert_eq!(
        id_token_alg(&s),
        "ES256",
        "the refreshed ID token, under the new key, was verified and kept"
    );

    rotate("retire").await;
    env.advance(Duration::from_secs(700));
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 2);
    let mut fresh = Browser::new();
    env.login(&mut fresh).await;
    assert_eq!(
        id_token_alg(&env.session_of(&fresh).await.expect("session")),
        "ES256"
    );
    assert_eq!(
        b.xhr(Method::POST, &env.url("/auth/logout")).await.status,
        200
    );
}
