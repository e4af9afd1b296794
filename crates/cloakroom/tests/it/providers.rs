//! Several identity providers in one deployment (issue #17, item 3): `[oidc]` and
//! `[[oidc.providers]] name = "second"`, two `oidc-provider` processes with the same users. A
//! session goes back to the provider it logged in with for everything: refresh, revocation,
//! end-session, back-channel logout; the same `sub` at the other provider is another user.

use crate::support::browser::Browser;
use crate::support::idp::Idp;
use crate::support::{Opts, TestEnv, CLIENT_ID};
use reqwest::Method;
use std::time::Duration;

fn two_providers(extra_toml: &str) -> Opts {
    Opts {
        second_idp: true,
        access_token_ttl: 600,
        extra_toml: extra_toml.into(),
        ..Opts::default()
    }
}

/// Logs `browser` in as alice through `/auth/login{query}` at `idp`.
async fn login_at(env: &TestEnv, b: &mut Browser, query: &str, idp: &Idp) {
    let r = b
        .get(&env.url(&format!("/auth/login?return_to=/app{query}")))
        .await;
    assert_eq!(r.status, 302, "login: {}", r.body);
    let loc = r.location();
    assert!(
        loc.starts_with(&idp.issuer),
        "the login went to {loc}, not to {}",
        idp.issuer
    );
    let callback = idp.login(b, &loc, "alice", "wonderland").await;
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "callback: {}", r.body);
}

async fn logout_token(idp: &Idp, sub: &str) -> String {
    idp.sign(
        &serde_json::json!({
            "iss": idp.issuer, "aud": CLIENT_ID, "iat": cloakroom::session::now_unix(),
            "jti": cloakroom::crypto::random_token(), "sub": sub,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }),
        &serde_json::json!({}),
    )
    .await
}

#[tokio::test]
async fn each_session_goes_back_to_the_provider_it_logged_in_with() {
    let env = TestEnv::start_with(two_providers("")).await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");
    // The same user at both providers, in two browsers (cookies ignore ports: one jar per IdP).
    let mut first = Browser::new();
    let mut second = Browser::new();
    login_at(&env, &mut first, "", &env.idp).await;
    login_at(&env, &mut second, "&provider=second", idp2).await;

    let u1 = first.xhr(Method::GET, &env.url("/auth/user")).await.json();
    let u2 = second.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_eq!(u1["provider"], "default", "{u1}");
    assert_eq!(u2["provider"], "second", "{u2}");
    assert_eq!(u1["sub"], u2["sub"], "the same sub at both IdPs");
    let s2 = env.session_of(&second).await.expect("a session");
    assert_eq!(s2.provider.as_deref(), Some("second"));

    // The API gets each session's own token; the second's is one the second IdP issued.
    let seen = env.upstream.authorizations_seen();
    assert_eq!(
        second.xhr(Method::GET, &env.url("/api/x")).await.status,
        200
    );
    assert_eq!(
        env.upstream.authorizations_since(seen),
        vec![format!("Bearer {}", s2.tokens.access_token.expose())]
    );
    let active = idp2
        .introspect(
            CLIENT_ID,
            crate::support::CLIENT_SECRET,
            s2.tokens.access_token.expose(),
        )
        .await;
    assert_eq!(active["active"], true, "{active}");

    // Refresh goes to the second IdP, not the first.
    env.advance(Duration::from_secs(700));
    assert_eq!(
        second.xhr(Method::GET, &env.url("/api/x")).await.status,
        200
    );
    assert_eq!(idp2.stat(&["token_requests", "refresh_token"]).await, 1);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 0);
    assert_eq!(first.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    assert_eq!(idp2.stat(&["token_requests", "refresh_token"]).await, 1);

    // "Sign out everywhere" at the second provider leaves the first provider's alice alone.
    let mut third = Browser::new();
    login_at(&env, &mut third, "&provider=second", idp2).await;
    let devices = third
        .xhr(Method::GET, &env.url("/auth/sessions"))
        .await
        .json();
    assert_eq!(
        devices["sessions"].as_array().map(Vec::len),
        Some(2),
        "the second provider's alice has two sessions, the first's is not hers: {devices}"
    );
    let s3 = env.session_of(&third).await.expect("a session");
    let r = third
        .send(
            third
                .request(Method::POST, &env.url("/auth/logout"))
                .header("x-csrf", "1")
                .header("content-type", "application/json")
                .body(r#"{"scope":"everywhere"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let end = r.json()["end_session_url"]
        .as_str()
        .expect("end_session_url")
        .to_string();
    assert!(end.starts_with(&idp2.issuer), "end-session at {end}");
    assert_eq!(
        second.xhr(Method::GET, &env.url("/api/x")).await.status,
        401
    );
    assert_eq!(first.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    // Revoked at the second IdP, where they were issued.
    let last2 = s3.tokens.refresh_token.as_ref().expect("rt");
    idp2.wait_revoked(last2.expose()).await;
    assert_eq!(env.idp.stat(&["revocations"]).await, 0);

    // A back-channel logout from the second IdP for alice ends only its sessions: the first's
    // alice stays. From the first IdP, hers ends.
    let mut fourth = Browser::new();
    login_at(&env, &mut fourth, "&provider=second", idp2).await;
    let token = logout_token(idp2, "alice").await;
    assert_eq!(env.post_logout_token(&token).await, 200);
    assert_eq!(
        fourth.xhr(Method::GET, &env.url("/api/x")).await.status,
        401
    );
    assert_eq!(first.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    let token = logout_token(&env.idp, "alice").await;
    assert_eq!(env.post_logout_token(&token).await, 200);
    assert_eq!(first.xhr(Method::GET, &env.url("/api/x")).await.status, 401);

    // No token of either provider reached a browser.
    for (b, s) in [(&second, &s2), (&third, &s3)] {
        for t in std::iter::once(&s.tokens.access_token).chain(s.tokens.refresh_token.as_ref()) {
            assert!(
                !b.received.contains(t.expose()),
                "a token reached the browser"
            );
        }
    }
}

#[tokio::test]
async fn routes_take_the_providers_they_name_and_unknown_providers_are_refused() {
    let extra = r#"
[[routes]]
prefix = "/first-only/"
upstream = "http://@UPSTREAM@"
token = "required"
providers = ["default"]
"#;
    let env = TestEnv::start_with(two_providers(extra)).await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");

    let mut b = Browser::new();
    // What an SPA offers buttons for: names only.
    let r = b.get(&env.url("/auth/providers")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"providers": [
            {"name": "default", "default": true},
            {"name": "second", "default": false},
        ]})
    );
    let r = b
        .get(&env.url("/auth/login?return_to=/app&provider=nope"))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "unknown_provider");

    let mut first = Browser::new();
    let mut second = Browser::new();
    login_at(&env, &mut first, "", &env.idp).await;
    login_at(&env, &mut second, "&provider=second", idp2).await;
    assert_eq!(
        first
            .xhr(Method::GET, &env.url("/first-only/x"))
            .await
            .status,
        200
    );
    let r = second.xhr(Method::GET, &env.url("/first-only/x")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "provider_not_allowed");
    // Other routes take both.
    assert_eq!(
        second.xhr(Method::GET, &env.url("/api/x")).await.status,
        200
    );
}

#[tokio::test]
async fn check_reports_each_provider() {
    let env = TestEnv::start_with(two_providers("")).await;
    let (code, out) = env.run_check("");
    assert_eq!(code, 0, "{out}");
    let idp2 = env.idp2.as_ref().expect("the second IdP");
    assert!(
        out.contains(&format!("idp [default] capabilities ({}):", env.idp.issuer))
            && out.contains(&format!("idp [second] capabilities ({}):", idp2.issuer))
            && out.contains("idp [default]: ok")
            && out.contains("idp [second]: ok"),
        "{out}"
    );
}

/// `[oidc]` is oidc-provider and `[[oidc.providers]] name = "dot"` is django-oauth-toolkit: two
/// independently written IdPs in one deployment, each session refreshed and revoked at its own
/// (DOT's revocation endpoint found in its RFC 8414 metadata).
#[tokio::test]
async fn oidc_provider_and_django_oauth_toolkit_side_by_side() {
    let env = TestEnv::start_with(Opts {
        dot_provider: true,
        access_token_ttl: 600,
        ..Opts::default()
    })
    .await;
    let dot = env.dot2.as_ref().expect("DOT");
    let mut first = Browser::new();
    login_at(&env, &mut first, "", &env.idp).await;
    let mut other = Browser::new();
    let r = other
        .get(&env.url("/auth/login?return_to=/app&provider=dot"))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = dot
        .login(&mut other, &r.location(), "alice", "wonderland")
        .await;
    assert_eq!(other.get(&callback).await.status, 302);

    let u = other.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_eq!(u["provider"], "dot", "{u}");
    assert_eq!(u["sub"], dot.sub("alice"), "DOT's own sub: {u}");
    let s = env.session_of(&other).await.expect("a session");
    let seen = env.upstream.authorizations_seen();
    assert_eq!(other.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert_eq!(
        env.upstream.authorizations_since(seen),
        vec![format!("Bearer {}", s.tokens.access_token.expose())]
    );
    assert_eq!(
        dot.introspect(s.tokens.access_token.expose()).await["active"],
        true
    );

    // Refreshed at DOT, not at oidc-provider.
    env.advance(Duration::from_secs(700));
    assert_eq!(other.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert_eq!(dot.counter("token_requests.refresh_token").await, 1);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 0);
    assert_eq!(first.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);

    // Logout revokes at DOT; the end-session URL is DOT's.
    let r = other.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let end = r.json()["end_session_url"]
        .as_str()
        .expect("end_session_url")
        .to_string();
    assert!(end.starts_with(&dot.idp.url("/o/logout/")), "{end}");
    dot.wait_revoked(1).await;
    assert_eq!(env.idp.stat(&["revocations"]).await, 0);
    assert_eq!(first.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
}

/// The admin API: a `sub` is unique per provider, so `?provider=` keeps to one provider's
/// sessions; without it, every provider's sessions with that `sub` are listed and ended.
#[tokio::test]
async fn the_admin_api_tells_the_providers_apart() {
    let env = TestEnv::start_with(two_providers("")).await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");
    let mut first = Browser::new();
    let mut second = Browser::new();
    login_at(&env, &mut first, "", &env.idp).await;
    login_at(&env, &mut second, "&provider=second", idp2).await;
    let admin = reqwest::Client::new();
    let call = |method: Method, path: &str| {
        admin
            .request(method, env.admin_url(0, path))
            .bearer_auth(crate::support::ADMIN_TOKEN)
    };
    let list = |q: &str| call(Method::GET, &format!("/admin/users/alice/sessions{q}")).send();
    let all: serde_json::Value = list("").await.expect("list").json().await.expect("json");
    let mut providers: Vec<String> = all["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["provider"].as_str().expect("provider").to_string())
        .collect();
    providers.sort();
    assert_eq!(providers, ["default", "second"], "{all}");
    let only: serde_json::Value = list("?provider=second")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(only["sessions"].as_array().map(Vec::len), Some(1), "{only}");
    assert_eq!(only["sessions"][0]["provider"], "second");
    let r = list("?provider=nope").await.expect("list");
    assert_eq!(r.status(), 400);

    let r = call(
        Method::DELETE,
        "/admin/users/alice/sessions?provider=default",
    )
    .send()
    .await
    .expect("delete");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json")["ended"],
        1
    );
    assert_eq!(first.xhr(Method::GET, &env.url("/api/x")).await.status, 401);
    assert_eq!(
        second.xhr(Method::GET, &env.url("/api/x")).await.status,
        200
    );
}

/// Both IdPs without RFC 9207 `iss` in their authorization responses (most IdPs in the wild),
/// and Cloakroom's authorization requests in the front channel (no PAR), so the state a
/// provider is given can be seen.
fn without_iss(second_toml: &str, extra_toml: &str) -> Opts {
    let mut o = Opts {
        par: "never",
        second_toml: format!("par = \"never\"\n{second_toml}"),
        ..two_providers(extra_toml)
    };
    o.idp_extra
        .insert("iss_response".into(), serde_json::Value::Bool(false));
    o
}

/// The mix-up attack (RFC 9700 §4.4) between two real IdPs: the browser starts a login at the
/// second provider, which (malicious) passes it on to the first, honest one with Cloakroom's
/// client_id there, the first IdP's registered redirect URI and the same `state`. The honest
/// IdP's code comes back to `/auth/callback`, the first provider's callback; the pending login
/// is the second provider's, whose callback is `/auth/callback/second`. Refused before the code
/// goes to any token endpoint (the second IdP's would have got it).
#[tokio::test]
async fn a_mix_up_between_two_providers_through_the_callback_is_refused() {
    let env = TestEnv::start_with(without_iss("", "")).await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");
    let mut b = Browser::new();
    let r = b
        .get(&env.url("/auth/login?return_to=/app&provider=second"))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let at_second = r.location();
    assert!(at_second.starts_with(&idp2.issuer), "{at_second}");
    let q = crate::support::query(&at_second);
    assert_eq!(q["redirect_uri"], env.url("/auth/callback/second"));
    // The malicious provider sends the browser on to the honest one.
    let mut honest = url::Url::parse(&format!("{}/auth", env.idp.issuer)).expect("url");
    honest
        .query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid")
        .append_pair("redirect_uri", &env.url("/auth/callback"))
        .append_pair("state", &q["state"])
        .append_pair("nonce", &q["nonce"])
        .append_pair("code_challenge", &q["code_challenge"])
        .append_pair("code_challenge_method", "S256");
    let callback = env
        .idp
        .login(&mut b, honest.as_str(), "alice", "wonderland")
        .await;
    assert!(
        callback.starts_with(&env.url("/auth/callback?")),
        "{callback}"
    );
    let cq = crate::support::query(&callback);
    assert!(
        cq.contains_key("code") && !cq.contains_key("iss"),
        "{callback}"
    );
    let hits_before = idp2.stat(&["token_endpoint_hits"]).await;
    let r = b.get(&callback).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_state");
    assert_eq!(
        idp2.stat(&["token_endpoint_hits"]).await,
        hits_before,
        "the honest IdP's code went to the second IdP's token endpoint"
    );
    assert_eq!(
        env.idp
            .stat(&["token_requests", "authorization_code"])
            .await,
        0
    );
    assert!(env.session_of(&b).await.is_none(), "no session");

    // Each provider's own logins still work, each through its own callback.
    let mut first = Browser::new();
    let mut second = Browser::new();
    login_at(&env, &mut first, "", &env.idp).await;
    login_at(&env, &mut second, "&provider=second", idp2).await;
    let u = second.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_eq!(u["provider"], "second", "{u}");
    // A response for the first provider's login at the second's callback is refused too.
    let mut c = Browser::new();
    let r = c.get(&env.url("/auth/login?return_to=/app")).await;
    let callback = env
        .idp
        .login(&mut c, &r.location(), "alice", "wonderland")
        .await;
    let moved = callback.replace("/auth/callback?", "/auth/callback/second?");
    let r = c.get(&moved).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_state");
}

/// Two providers on the one shared callback (`callback = "shared"`): nothing but RFC 9207 `iss`
/// tells their responses apart, so a response without it is refused, even from a provider
/// that does not promise it. With `iss`, the shared callback works.
#[tokio::test]
async fn a_callback_shared_by_two_providers_takes_only_responses_with_iss() {
    let env = TestEnv::start_with(without_iss("callback = \"shared\"", "")).await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");
    let mut b = Browser::new();
    let r = b
        .get(&env.url("/auth/login?return_to=/app&provider=second"))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(
        crate::support::query(&r.location())["redirect_uri"],
        env.url("/auth/callback")
    );
    let callback = idp2
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    assert!(!crate::support::query(&callback).contains_key("iss"));
    let r = b.get(&callback).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_state");
    assert_eq!(idp2.stat(&["token_endpoint_hits"]).await, 0);
    drop(env);

    // IdPs that send `iss`: the shared callback takes each one's responses.
    let env = TestEnv::start_with(Opts {
        second_toml: "callback = \"shared\"".into(),
        ..two_providers("")
    })
    .await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");
    let mut b = Browser::new();
    login_at(&env, &mut b, "&provider=second", idp2).await;
    let u = b.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_eq!(u["provider"], "second", "{u}");
}

const PARTNER_API: &str = "https://partner-api.test";
const INTERNAL: &str = "https://internal.test";

/// A token-exchange route with an actor token that takes both providers' sessions: a session
/// of the second provider is exchanged at the second IdP with the second IdP's own
/// client-credentials token as the actor. The first IdP is never asked for a token, so no
/// token it issued exists to be sent anywhere. Routes that ask an IdP for a token on the
/// session's behalf and name no `providers` take only `[oidc]`'s sessions: the second
/// provider gets 403 there and is never asked for their resources at login.
#[tokio::test]
async fn a_partner_session_on_an_exchange_route_sends_no_primary_issued_token() {
    let extra = r#"
[[routes]]
prefix = "/partner-api/"
upstream = "http://@UPSTREAM@"
token = "exchange"
providers = ["default", "second"]
[routes.exchange]
audience = "https://partner-api.test"
actor_token = true
[[routes]]
prefix = "/internal-exchange/"
upstream = "http://@UPSTREAM@"
token = "exchange"
[routes.exchange]
audience = "https://partner-api.test"
actor_token = true
[[routes]]
prefix = "/internal/"
upstream = "http://@UPSTREAM@"
resource = "https://internal.test"
scopes = ["internal:read"]
"#;
    let mut o = Opts {
        par: "never",
        second_toml: "par = \"never\"".into(),
        ..two_providers(extra)
    };
    o.idp_extra.insert(
        "token_exchange".into(),
        serde_json::json!({"audiences": [PARTNER_API]}),
    );
    o.idp_extra.insert(
        "resource_servers".into(),
        serde_json::json!([{"indicator": INTERNAL, "scope": "internal:read"}]),
    );
    o.idp_client_extra
        .insert("client_credentials".into(), true.into());
    o.idp_client_extra
        .insert("token_exchange".into(), true.into());
    o.idp_client_extra
        .insert("scope".into(), "openid profile email offline_access".into());
    let env = TestEnv::start_with(o).await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");

    let mut second = Browser::new();
    let r = second
        .get(&env.url("/auth/login?return_to=/app&provider=second"))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(
        !r.location().contains("resource="),
        "the second provider is asked for an internal resource: {}",
        r.location()
    );
    let callback = idp2
        .login(&mut second, &r.location(), "alice", "wonderland")
        .await;
    assert_eq!(second.get(&callback).await.status, 302);

    let seen = env.upstream.authorizations_seen();
    let r = second.xhr(Method::GET, &env.url("/partner-api/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = &r.json()["token_claims"];
    assert_eq!(c["aud"], PARTNER_API, "{c}");
    assert_eq!(c["iss"], idp2.issuer.as_str(), "{c}");
    assert_eq!(c["act"]["sub"], CLIENT_ID, "{c}");
    assert_eq!(env.upstream.authorizations_since(seen).len(), 1);
    assert_eq!(
        idp2.stat(&["token_requests", "client_credentials"]).await,
        1,
        "the actor token is the second IdP's own"
    );
    assert_eq!(
        env.idp.stat(&["token_endpoint_hits"]).await,
        0,
        "the first IdP issued a token for a session of the second"
    );
    for prefix in ["/internal-exchange/x", "/internal/x"] {
        let r = second.xhr(Method::GET, &env.url(prefix)).await;
        assert_eq!(r.status, 403, "{prefix}: {}", r.body);
        assert_eq!(r.json()["error"], "provider_not_allowed", "{prefix}");
    }
    assert_eq!(env.idp.stat(&["token_endpoint_hits"]).await, 0);

    // The first provider's sessions take every one of these routes, with its own tokens.
    let mut first = Browser::new();
    let r = first.get(&env.url("/auth/login?return_to=/app")).await;
    assert!(r.location().contains("resource="), "{}", r.location());
    let callback = env
        .idp
        .login(&mut first, &r.location(), "alice", "wonderland")
        .await;
    assert_eq!(first.get(&callback).await.status, 302);
    for prefix in ["/partner-api/x", "/internal-exchange/x", "/internal/x"] {
        let r = first.xhr(Method::GET, &env.url(prefix)).await;
        assert_eq!(r.status, 200, "{prefix}: {}", r.body);
        assert_eq!(
            r.json()["token_claims"]["iss"],
            env.idp.issuer.as_str(),
            "{prefix}"
        );
    }
}

/// The record keys in Redis.
fn records(env: &TestEnv) -> std::collections::BTreeSet<String> {
    env.redis
        .values(&["KEYS", "cloakroom:s:*"])
        .into_iter()
        .map(|k| k.trim().to_string())
        .filter(|k| k.starts_with("cloakroom:s:"))
        .collect()
}

/// Issue #30, item 7: the same `sub` at two IdPs is two users with two indexes (an HMAC over
/// the issuer and the `sub`). The second IdP's back-channel logout and a second-provider
/// session's `logout scope=everywhere` end only the second provider's sessions, and never a
/// record of the first provider's alice that does not open here (it says no provider).
#[tokio::test]
async fn another_providers_logout_never_ends_the_same_subs_sessions_even_unreadable_ones() {
    let env = TestEnv::start_with(two_providers("")).await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");
    let mut a1 = Browser::new();
    login_at(&env, &mut a1, "", &env.idp).await;
    let before = records(&env);
    let mut a2 = Browser::new();
    login_at(&env, &mut a2, "", &env.idp).await;
    let after = records(&env);
    let mut new = after.difference(&before);
    let (Some(garbled), None) = (new.next().cloned(), new.next()) else {
        panic!("one new record: {before:?} → {after:?}");
    };
    // The first provider's second alice session becomes a record nobody can open.
    env.redis
        .cli(&["HSET", &garbled, "d", "garbage, not a sealed session"]);
    let exists = |k: &str| env.redis.values(&["EXISTS", k]).concat().trim() == "1";
    assert!(exists(&garbled));

    let mut b1 = Browser::new();
    let mut b2 = Browser::new();
    login_at(&env, &mut b1, "&provider=second", idp2).await;
    login_at(&env, &mut b2, "&provider=second", idp2).await;

    // "Sign out everywhere" from a second-provider session: both of its alice's sessions end,
    // the first provider's alice keeps hers, the unreadable one included.
    let r = b1
        .send(
            b1.request(Method::POST, &env.url("/auth/logout"))
                .header("x-csrf", "1")
                .header("content-type", "application/json")
                .body(r#"{"scope":"everywhere"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ended"], 2, "{}", r.body);
    assert_eq!(b2.xhr(Method::GET, &env.url("/api/x")).await.status, 401);
    assert_eq!(a1.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert!(
        exists(&garbled),
        "the first provider's unreadable record was ended by the second's logout everywhere"
    );

    // A back-channel logout from the second IdP for alice: the same.
    let mut b3 = Browser::new();
    login_at(&env, &mut b3, "&provider=second", idp2).await;
    let token = logout_token(idp2, "alice").await;
    assert_eq!(env.post_logout_token(&token).await, 200);
    assert_eq!(b3.xhr(Method::GET, &env.url("/api/x")).await.status, 401);
    assert_eq!(a1.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert!(
        exists(&garbled),
        "the first provider's unreadable record was ended by the second IdP's back-channel logout"
    );

    // The first IdP's back-channel logout ends both of its alice's sessions, the unreadable
    // one too: it is in that issuer's index.
    let token = logout_token(&env.idp, "alice").await;
    assert_eq!(env.post_logout_token(&token).await, 200);
    assert_eq!(a1.xhr(Method::GET, &env.url("/api/x")).await.status, 401);
    assert!(
        !exists(&garbled),
        "the first IdP's logout ends its unreadable record"
    );
}
