//! The core suite against a second OpenID Provider written independently of `oidc-provider`
//! (issue #17): django-oauth-toolkit 3.4.1 (`tests/idp-dot/`, one shared process, each test
//! with a client and users of its own). Login through Django's login form, an API call with the
//! session's token, refresh (DOT rotates refresh tokens and detects reuse), logout with
//! revocation, and the no-token-in-browser scan — plus what DOT does differently: its OIDC
//! discovery names no revocation endpoint (its RFC 8414 metadata does, and Cloakroom reads it
//! from there), its RP-initiated logout deletes the
//! user's tokens, it issues refresh tokens without `offline_access`, its `prompt=none` error
//! responses lack the RFC 9207 `iss` it promises, and it can sign ID tokens with HS256.

use crate::matrix::{core, CoreRun, Expect, USUAL};
use crate::support::browser::Browser;
use crate::support::{query, Opts, Provider, TestEnv};
use reqwest::Method;
use std::time::Duration;

/// An env against DOT; its access tokens live 600 s (the core suite advances 700 s).
fn dot() -> Opts {
    Opts {
        provider: Provider::Dot,
        access_token_ttl: 600,
        ..Opts::default()
    }
}

/// DOT as Cloakroom sees it: RS256 ID tokens with the profile claims, opaque access tokens,
/// `sub` the user's database id, rotated refresh tokens, and revocation at logout at the
/// endpoint Cloakroom finds in DOT's RFC 8414 metadata (its OIDC discovery names none).
const DOT: Expect = USUAL;

/// The core suite (the logout revoked the tokens at DOT); then the end-session URL Cloakroom's
/// logout answered, followed as the SPA does: DOT ends its own session too.
#[tokio::test]
async fn the_core_suite_and_rp_initiated_logout() {
    let CoreRun {
        env,
        mut browser,
        logout,
        last,
    } = core(dot(), DOT).await;
    let dot = env.dot();
    let at = last.tokens.access_token.expose();
    assert_eq!(
        dot.introspect(at).await["active"],
        false,
        "revoked by the logout itself (at the RFC 8414 metadata's revocation endpoint)"
    );
    let live = dot.stats().await;
    assert_eq!(live["live_refresh_tokens"], 0, "{live}");

    let url = logout["end_session_url"]
        .as_str()
        .expect("an end_session_url");
    let q = query(url);
    assert_eq!(q["id_token_hint"], last.tokens.id_token.expose());
    assert_eq!(q["client_id"], dot.client_id);
    assert_eq!(q["post_logout_redirect_uri"], env.url("/"));
    assert_eq!(dot.end_session(&mut browser, url).await, env.url("/"));
    assert_eq!(dot.counter("end_session").await, 1);
    assert_eq!(dot.introspect(at).await["active"], false, "deleted at DOT");
    let after = dot.stats().await;
    assert_eq!(after["live_refresh_tokens"], 0, "{after}");
    assert_eq!(after["live_access_tokens"], 0, "{after}");
    let (status, body) = dot
        .try_refresh(last.tokens.refresh_token.as_ref().expect("rt").expose())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // The DOT session is over too: the next login asks for the password again.
    let r = browser.get(&env.url("/auth/login?return_to=/app")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let r = browser.get(&r.location()).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(
        r.location().starts_with("/accounts/login/?next="),
        "{}",
        r.location()
    );
    for t in [&last.tokens.access_token]
        .into_iter()
        .chain(last.tokens.refresh_token.as_ref())
    {
        assert!(
            !browser.received.contains(t.expose()),
            "a token reached the browser"
        );
    }
}

/// With `oidc.userinfo`, the same: DOT's userinfo answers the claims its ID tokens carry.
#[tokio::test]
async fn the_core_suite_with_userinfo() {
    core(
        Opts {
            oidc_toml: "userinfo = true".into(),
            ..dot()
        },
        DOT,
    )
    .await;
}

/// DOT supports RFC 7009, at an endpoint only its RFC 8414 metadata names (§3.1: the issuer's
/// path after `/.well-known/oauth-authorization-server`), not the OIDC discovery document: a
/// revocation there with Cloakroom's client credentials kills the refresh token and the access
/// token bound to it.
#[tokio::test]
async fn revocation_is_advertised_in_rfc8414_metadata_only() {
    let env = TestEnv::start_with(dot()).await;
    let dot = env.dot();
    let get = |url: String| async move {
        let r = reqwest::get(&url).await.expect("metadata");
        assert_eq!(r.status(), 200, "{url}");
        r.json::<serde_json::Value>().await.expect("JSON")
    };
    let oidc = get(format!(
        "{}/.well-known/openid-configuration",
        dot.idp.issuer
    ))
    .await;
    assert_eq!(oidc["issuer"], dot.idp.issuer);
    assert!(oidc.get("revocation_endpoint").is_none(), "{oidc}");
    assert!(oidc.get("introspection_endpoint").is_none(), "{oidc}");
    assert_eq!(oidc["end_session_endpoint"], dot.idp.url("/o/logout/"));
    assert_eq!(oidc["authorization_response_iss_parameter_supported"], true);
    let rfc8414 = get(dot.idp.url("/.well-known/oauth-authorization-server/o")).await;
    assert_eq!(rfc8414["issuer"], dot.idp.issuer);
    let revocation = rfc8414["revocation_endpoint"]
        .as_str()
        .expect("revocation_endpoint")
        .to_string();
    assert_eq!(revocation, dot.idp.url("/o/revoke_token/"));
    // Cloakroom reads it from there, and `cloakroom check` says where it was found.
    let (code, out) = env.run_check("");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("revocation (RFC 7009)")
                && l.contains("in its RFC 8414 metadata only")),
        "{out}"
    );

    let mut b = Browser::new();
    env.login(&mut b).await;
    let s = env.session_of(&b).await.expect("a session");
    let r = reqwest::Client::new()
        .post(&revocation)
        .basic_auth(&dot.client_id, Some(&dot.secret))
        .form(&[
            (
                "token",
                s.tokens.refresh_token.as_ref().expect("rt").expose(),
            ),
            ("token_type_hint", "refresh_token"),
        ])
        .send()
        .await
        .expect("revocation");
    assert_eq!(r.status(), 200);
    assert_eq!(
        dot.introspect(s.tokens.access_token.expose()).await["active"],
        false
    );
    assert_eq!(dot.stats().await["live_refresh_tokens"], 0);
    // Cloakroom learns at its next refresh: refused, the session ends.
    env.advance(Duration::from_secs(700));
    let r = b.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(env.session_of(&b).await.is_none());
}

/// Reuse detection (`REFRESH_TOKEN_REUSE_PROTECTION`): a refresh token that was rotated away,
/// replayed (a stolen copy), is refused and DOT revokes the whole token family, the session's
/// current tokens included; Cloakroom's next refresh is refused and the session ends.
#[tokio::test]
async fn a_replayed_refresh_token_revokes_the_session_s_tokens() {
    let env = TestEnv::start_with(dot()).await;
    let dot = env.dot();
    let mut b = Browser::new();
    env.login(&mut b).await;
    let first = env.session_of(&b).await.expect("a session");
    let stolen = first.tokens.refresh_token.clone().expect("a refresh token");
    env.advance(Duration::from_secs(700));
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    let now = env.session_of(&b).await.expect("a session");
    let current = now.tokens.refresh_token.clone().expect("a refresh token");
    assert_ne!(current.expose(), stolen.expose(), "rotated");
    assert_eq!(
        dot.introspect(now.tokens.access_token.expose()).await["active"],
        true
    );
    // Unlike oidc-provider, DOT deletes the previous access token when it rotates: a request
    // still carrying it (one forwarded while the refresh ran) is refused by a resource server
    // that introspects.
    assert_eq!(
        dot.introspect(first.tokens.access_token.expose()).await["active"],
        false,
        "the access token before the refresh"
    );

    let (status, body) = dot.try_refresh(stolen.expose()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        dot.introspect(now.tokens.access_token.expose()).await["active"],
        false,
        "the family's access token was revoked with it"
    );
    let s = dot.stats().await;
    assert_eq!(s["live_refresh_tokens"], 0, "{s}");

    env.advance(Duration::from_secs(700));
    let r = b.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "unauthenticated");
    assert!(env.session_of(&b).await.is_none(), "the session ended");
    assert_eq!(env.refresh_grants().await, 3);
    assert_eq!(dot.counter("token_refused.refresh_token").await, 2);
}

/// DOT gives a refresh token with every code grant: `offline_access` is just a scope name
/// to it (one it must know, or the login fails with `invalid_scope`). Without it in
/// `oidc.scopes` the session still refreshes.
#[tokio::test]
async fn a_refresh_token_without_offline_access() {
    let env = TestEnv::start_with(Opts {
        oidc_toml: r#"scopes = ["openid", "profile", "email"]"#.into(),
        ..dot()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let s = env.session_of(&b).await.expect("a session");
    assert!(s.tokens.refresh_token.is_some());
    env.advance(Duration::from_secs(700));
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert_eq!(env.refresh_grants().await, 1);
    assert_ne!(
        env.session_of(&b)
            .await
            .expect("a session")
            .tokens
            .access_token
            .expose(),
        s.tokens.access_token.expose()
    );
}

/// `prompt=none`, which stock DOT answers with a 500 (oauthlib's `validate_silent_login` and
/// `validate_silent_authorization` are left to the deployment; server.py implements them).
/// Over a live DOT session a silent login brings a new session without a form. Without one,
/// DOT redirects `error=login_required` but without the RFC 9207 `iss` its discovery promises
/// (it adds `iss` to successful responses only: django-oauth-toolkit issue #1846), and
/// Cloakroom, as RFC 9207 §2.4 requires, refuses that response.
#[tokio::test]
async fn silent_login_over_a_dot_session_and_without_one() {
    let env = TestEnv::start_with(dot()).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let first = env.session_of(&b).await.expect("a session");
    let r = b
        .get(&env.url("/auth/login?prompt=none&return_to=/app/page"))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = env.follow_back(&mut b, &r.location()).await;
    assert!(query(&callback).contains_key("iss"), "{callback}");
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), "/app/page");
    let second = env.session_of(&b).await.expect("a session");
    assert_ne!(
        second.tokens.access_token.expose(),
        first.tokens.access_token.expose()
    );
    assert_eq!(second.sub, env.sub_of("alice"));
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);

    let mut fresh = Browser::new();
    let r = fresh
        .get(&env.url("/auth/login?prompt=none&return_to=/app/page"))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = env.follow_back(&mut fresh, &r.location()).await;
    let q = query(&callback);
    assert_eq!(q["error"], "login_required", "{callback}");
    assert!(!q.contains_key("iss"), "DOT #1846 fixed? {callback}");
    let r = fresh.get(&callback).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_state")),
        "{}",
        r.body
    );
    assert!(env.session_of(&fresh).await.is_none());
}

/// A DOT client registered with the HS256 algorithm gets ID tokens signed with its client
/// secret (DOT's discovery lists HS256 next to RS256). Cloakroom accepts asymmetric ID-token
/// signatures only: the login fails at the callback, and no session is made. Register
/// Cloakroom's client at DOT with RS256.
#[tokio::test]
async fn hs256_id_tokens_are_refused() {
    let mut o = dot();
    o.idp_client_extra
        .insert("algorithm".into(), "HS256".into());
    let env = TestEnv::start_with(o).await;
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login?return_to=/app")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = env
        .dot()
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    let r = b.get(&callback).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("invalid_id_token")),
        "{}",
        r.body
    );
    assert!(env.session_of(&b).await.is_none());
    assert_eq!(
        env.dot().counter("token_requests.authorization_code").await,
        1
    );
}
