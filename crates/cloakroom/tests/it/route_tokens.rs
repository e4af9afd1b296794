//! The right token for each API (SPEC §2 v2 "route tokens"), against the real IdP with resource
//! indicators (JWT access tokens per resource server), a token-exchange grant, client
//! credentials and `acr` values: per-resource tokens from the refresh token, exchanged tokens,
//! Cloakroom's own client token, and step-up (route config and RFC 9470 challenges) ending in
//! an in-place session upgrade. The echo upstream reports the claims of the JWT it received.

use crate::support::browser::{Browser, Resp};
use crate::support::{Opts, TestEnv, CLIENT_ID};
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::time::Duration;

const ORDERS: &str = "https://orders.test";
const BILLING: &str = "https://billing.test";
const JOBS: &str = "https://jobs.test";
const LEDGER: &str = "https://ledger.test";
const LOA1: &str = "urn:cloakroom:loa:1";
const LOA2: &str = "urn:cloakroom:loa:2";

const ROUTES: &str = r#"
[[routes]]
prefix = "/orders/"
upstream = "http://@UPSTREAM@"
resource = "https://orders.test"
scopes = ["orders:read"]
[[routes]]
prefix = "/billing/"
upstream = "http://@UPSTREAM@"
resource = "https://billing.test"
scopes = ["billing:read"]
[[routes]]
prefix = "/ledger/"
upstream = "http://@UPSTREAM@"
token = "exchange"
[routes.exchange]
audience = "https://ledger.test"
scope = "ledger:write"
actor_token = true
[[routes]]
prefix = "/nowhere/"
upstream = "http://@UPSTREAM@"
token = "exchange"
[routes.exchange]
audience = "https://nowhere.test"
[[routes]]
prefix = "/jobs/"
upstream = "http://@UPSTREAM@"
token = "client"
csrf = false
resource = "https://jobs.test"
scopes = ["jobs:run"]
[[routes]]
prefix = "/either/"
upstream = "http://@UPSTREAM@"
token = "user_or_client"
csrf = false
resource = "https://jobs.test"
scopes = ["jobs:run"]
[[routes]]
prefix = "/recent/"
upstream = "http://@UPSTREAM@"
max_age = "5m"
[[routes]]
prefix = "/gold/"
upstream = "http://@UPSTREAM@"
acr_values = ["urn:cloakroom:loa:2"]
[[routes]]
prefix = "/guarded/"
upstream = "http://@UPSTREAM@"
resource = "https://orders.test"
scopes = ["orders:read"]
"#;

fn opts() -> Opts {
    let mut o = Opts {
        extra_toml: ROUTES.into(),
        access_token_ttl: 600,
        ..Opts::default()
    };
    let rs =
        |indicator: &str, scope: &str| serde_json::json!({"indicator": indicator, "scope": scope});
    o.idp_extra.insert(
        "resource_servers".into(),
        serde_json::json!([
            rs(ORDERS, "orders:read"),
            rs(BILLING, "billing:read"),
            rs(JOBS, "jobs:run"),
        ]),
    );
    o.idp_extra.insert(
        "token_exchange".into(),
        serde_json::json!({"audiences": [LEDGER]}),
    );
    o.idp_extra
        .insert("acr_values".into(), serde_json::json!([LOA1, LOA2]));
    o.idp_client_extra
        .insert("client_credentials".into(), true.into());
    // Every ID token says when the user authenticated (OIDC Registration `require_auth_time`).
    o.idp_client_extra
        .insert("require_auth_time".into(), true.into());
    o.idp_client_extra
        .insert("token_exchange".into(), true.into());
    // Only the OpenID scopes are the client's own; resource scopes belong to the resource
    // servers.
    o.idp_client_extra
        .insert("scope".into(), "openid profile email offline_access".into());
    o
}

/// Cloakroom's session cookie (the jar also holds the IdP's: cookies ignore ports).
fn ours(b: &Browser) -> Option<String> {
    b.jar.get("__Host-cloakroom").cloned()
}

fn sha(t: &str) -> String {
    crate::support::upstream::hex(&Sha256::digest(t.as_bytes()))
}

/// The echo's report of the token it got: its claims and its hash.
fn got(r: &Resp) -> (serde_json::Value, String) {
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    (
        v["token_claims"].clone(),
        v["token_sha256"].as_str().unwrap_or_default().to_string(),
    )
}

/// 16 parallel calls of `b` to `<prefix>/p<i>`.
async fn sixteen(env: &TestEnv, b: &Browser, prefix: &str) -> Vec<Resp> {
    let calls = (0..16).map(|i| {
        let mut b = b.clone();
        let url = env.url(&format!("{prefix}/p{i}"));
        async move { b.xhr(Method::GET, &url).await }
    });
    futures_util::future::join_all(calls).await
}

async fn stat(env: &TestEnv, path: &[&str]) -> u64 {
    env.idp.stat(path).await
}

#[tokio::test]
async fn each_route_gets_its_own_audience_cached_and_single_flight_and_logout_revokes_them_all() {
    let env = TestEnv::start_with(opts()).await;
    let mut b = Browser::new();
    env.login(&mut b).await;

    let (orders, orders_tok) = got(&b.xhr(Method::GET, &env.url("/orders/list")).await);
    assert_eq!(orders["aud"], ORDERS, "{orders}");
    assert_eq!(orders["sub"], "alice");
    let (billing, billing_tok) = got(&b.xhr(Method::GET, &env.url("/billing/list")).await);
    assert_eq!(billing["aud"], BILLING, "{billing}");
    // The login's own token (opaque) on a plain route; three different tokens.
    let r = b.xhr(Method::GET, &env.url("/recent/x")).await;
    let (plain, plain_tok) = got(&r);
    assert!(plain.is_null(), "the login token is opaque: {plain}");
    assert!(orders_tok != billing_tok && orders_tok != plain_tok && billing_tok != plain_tok);

    // Cached: the same token again, no new IdP grant.
    let refreshes = stat(&env, &["token_requests", "refresh_token"]).await;
    assert_eq!(refreshes, 2, "one refresh per resource");
    let (_, again) = got(&b.xhr(Method::GET, &env.url("/orders/list")).await);
    assert_eq!(again, orders_tok);
    assert_eq!(stat(&env, &["token_requests", "refresh_token"]).await, 2);

    // Expired: 16 parallel calls, one refresh for that resource.
    env.advance(Duration::from_secs(700));
    let mut seen = std::collections::BTreeSet::new();
    for r in &sixteen(&env, &b, "/orders").await {
        let (c, t) = got(r);
        assert_eq!(c["aud"], ORDERS);
        seen.insert(t);
    }
    assert_eq!(seen.len(), 1, "every call got the one new token");
    assert!(!seen.contains(&orders_tok));
    assert_eq!(
        stat(
            &env,
            &["resource_tokens", &format!("refresh_token {ORDERS}")]
        )
        .await,
        2,
        "one refresh for the orders resource at login time, one after expiry"
    );
    assert_eq!(stat(&env, &["refresh_reuse"]).await, 0);

    // Logout revokes every token the session held: the login's, the refresh token and each
    // route's own. The IdP revokes the opaque ones; a JWT it cannot revoke (oidc-provider
    // answers `unsupported_token_type`), but it must have been sent.
    let s = env.session_of(&b).await.expect("session");
    let held: Vec<String> = s
        .tokens
        .derived
        .values()
        .map(|d| sha(d.access_token.expose()))
        .collect();
    assert_eq!(held.len(), 2, "orders and billing");
    let opaque = [
        sha(s.tokens.access_token.expose()),
        sha(s.tokens.refresh_token.as_ref().expect("rt").expose()),
    ];
    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = env.idp.stats().await;
        let revoked: Vec<String> = stats["revoked_tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let refused = &stats["revocation_refused"];
        let jwts_sent = held
            .iter()
            .all(|h| revoked.contains(h) || refused[h] == "unsupported_token_type");
        if jwts_sent && opaque.iter().all(|h| revoked.contains(h)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every token was revoked: held {held:?} and {opaque:?}, revoked {revoked:?}, refused {refused}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in [
        &s.tokens.access_token,
        s.tokens.refresh_token.as_ref().expect("rt"),
    ] {
        assert!(
            !b.received.contains(t.expose()),
            "a token reached the browser"
        );
    }
    for d in s.tokens.derived.values() {
        assert!(!b.received.contains(d.access_token.expose()));
    }
}

#[tokio::test]
async fn exchanged_tokens_carry_the_audience_and_the_actor_are_cached_and_refusals_are_403() {
    let env = TestEnv::start_with(opts()).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let (c, tok) = got(&b.xhr(Method::GET, &env.url("/ledger/post")).await);
    assert_eq!(c["aud"], LEDGER, "{c}");
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["act"]["sub"], CLIENT_ID, "Cloakroom is the actor: {c}");
    let ex = [LEDGER];
    assert_eq!(stat(&env, &["token_exchanges", ex[0]]).await, 1);
    let (_, again) = got(&b.xhr(Method::GET, &env.url("/ledger/post")).await);
    assert_eq!(again, tok, "cached in the session");
    assert_eq!(stat(&env, &["token_exchanges", LEDGER]).await, 1);

    // Due again: 16 parallel calls, one exchange.
    env.advance(Duration::from_secs(700));
    let mut seen = std::collections::BTreeSet::new();
    for r in sixteen(&env, &b, "/ledger").await {
        seen.insert(got(&r).1);
    }
    assert_eq!(seen.len(), 1);
    assert_eq!(stat(&env, &["token_exchanges", LEDGER]).await, 2);

    // An audience the IdP does not serve: 403, and the session lives on.
    let r = b.xhr(Method::GET, &env.url("/nowhere/x")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "token_exchange_denied");
    assert_eq!(
        b.xhr(Method::GET, &env.url("/ledger/post")).await.status,
        200
    );
    let s = env.session_of(&b).await.expect("session");
    for d in s.tokens.derived.values() {
        assert!(!b.received.contains(d.access_token.expose()));
    }
    assert!(!b.received.contains(s.tokens.access_token.expose()));
}

#[tokio::test]
async fn client_routes_send_cloakrooms_own_token_once_for_all_instances() {
    let env = TestEnv::start_with(Opts {
        instances: 2,
        ..opts()
    })
    .await;
    // A machine caller: no session, no CSRF header.
    let plain = reqwest::Client::new();
    let call = |i: usize, path: &str| {
        let url = format!("{}{path}", env.base(i));
        let plain = plain.clone();
        async move {
            let r = plain.get(url).send().await.expect("call");
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.expect("json");
            (status, v)
        }
    };
    let (st, v) = call(0, "/jobs/run").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token_claims"]["aud"], JOBS, "{v}");
    assert_eq!(v["token_claims"]["client_id"], CLIENT_ID);
    let first = v["token_sha256"].clone();
    // The other instance takes the same token from the store.
    let (_, v) = call(1, "/jobs/run").await;
    assert_eq!(v["token_sha256"], first);
    assert_eq!(
        stat(&env, &["token_requests", "client_credentials"]).await,
        1
    );

    // Due: 16 parallel calls over both instances, one grant.
    env.advance(Duration::from_secs(700));
    let calls = (0..16).map(|i| call(i % 2, "/jobs/run"));
    let mut seen = std::collections::BTreeSet::new();
    for (st, v) in futures_util::future::join_all(calls).await {
        assert_eq!(st, 200, "{v}");
        seen.insert(v["token_sha256"].to_string());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        stat(&env, &["token_requests", "client_credentials"]).await,
        2
    );

    // user_or_client: without a session (or without the CSRF header) the client's token; with
    // a session and the header, the user's.
    let (_, v) = call(0, "/either/x").await;
    assert_eq!(v["token_claims"]["sub"], CLIENT_ID, "{v}");
    let mut b = Browser::new();
    env.login(&mut b).await;
    let (c, _) = got(&b.xhr(Method::GET, &env.url("/either/x")).await);
    assert_eq!(c["sub"], "alice", "{c}");
    assert_eq!(c["aud"], JOBS);
    let r = b.get(&env.url("/either/x")).await;
    assert_eq!(
        r.json()["token_claims"]["sub"],
        CLIENT_ID,
        "no CSRF header: not the user"
    );
}

/// Follows a step-up `login_url` back to the SPA: (the IdP asked for a login, where the
/// browser ended).
async fn step_up(
    env: &TestEnv,
    b: &mut Browser,
    login_url: &str,
    extra: &[(&str, &str)],
) -> (bool, String) {
    let r = b
        .get(&env.url(&format!("{login_url}&return_to=/app/page")))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let (callback, asked) = env
        .idp
        .login_with(b, &r.location(), "alice", "wonderland", extra)
        .await;
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "callback: {}", r.body);
    (asked, r.location())
}

#[tokio::test]
async fn a_route_that_needs_a_recent_or_stronger_login_gets_it_by_upgrading_the_session_in_place() {
    let env = TestEnv::start_with(opts()).await;
    let mut b = Browser::new();
    // A login ten minutes old (the IdP records it so), at the lowest level.
    let r = b.get(&env.url("/auth/login?return_to=/app")).await;
    let (callback, _) = env
        .idp
        .login_with(
            &mut b,
            &r.location(),
            "alice",
            "wonderland",
            &[("auth_age", "600")],
        )
        .await;
    assert_eq!(b.get(&callback).await.status, 302);
    let cookie = ours(&b);
    assert_eq!(b.xhr(Method::GET, &env.url("/orders/x")).await.status, 200);

    // max_age: a 401 the SPA can act on, never a redirect.
    let r = b.xhr(Method::GET, &env.url("/recent/x")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"], "step_up_required");
    assert_eq!(v["max_age"], 300);
    assert!(v["acr_values"].is_null());
    let login_url = v["login_url"].as_str().expect("login_url").to_string();
    assert_eq!(login_url, "/auth/login?max_age=300");
    let (asked, back) = step_up(&env, &mut b, &login_url, &[]).await;
    assert!(asked, "the IdP made the user sign in again");
    assert_eq!(back, "/app/page");
    assert_eq!(
        ours(&b),
        cookie,
        "the same session cookie: upgraded in place"
    );
    assert_eq!(b.xhr(Method::GET, &env.url("/recent/x")).await.status, 200);
    let user = b.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert!(
        user["auth_time"].as_i64().expect("auth_time") > cloakroom::session::now_unix() - 60,
        "{user}"
    );
    assert_eq!(user["acr"], LOA1);

    // acr_values: the same, to a stronger level.
    let r = b.xhr(Method::GET, &env.url("/gold/x")).await;
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["error"], "step_up_required");
    assert_eq!(v["acr_values"], LOA2);
    let login_url = v["login_url"].as_str().expect("login_url").to_string();
    // A login that does not reach it changes nothing.
    let (_, back) = step_up(&env, &mut b, &login_url, &[("acr", LOA1)]).await;
    assert_eq!(back, "/app/page?error=step_up_failed");
    assert_eq!(b.xhr(Method::GET, &env.url("/gold/x")).await.status, 401);
    let (asked, _) = step_up(&env, &mut b, &login_url, &[("acr", LOA2)]).await;
    assert!(asked);
    assert_eq!(ours(&b), cookie);
    assert_eq!(b.xhr(Method::GET, &env.url("/gold/x")).await.status, 200);
    let user = b.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_eq!(user["acr"], LOA2, "{user}");
    assert!(
        user["amr"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m == "otp")),
        "{user}"
    );
    // Still one session for the user, and its other routes work on.
    assert_eq!(b.xhr(Method::GET, &env.url("/orders/x")).await.status, 200);
    assert!(!b.received.contains("access_token"));
}

#[tokio::test]
async fn an_upstreams_rfc_9470_challenge_becomes_a_step_up_and_the_upgraded_session_gets_through() {
    let env = TestEnv::start_with(opts()).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let path = format!("/guarded/stepup/{LOA2}/pay");
    let r = b.xhr(Method::GET, &env.url(&path)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"], "step_up_required", "{v}");
    assert_eq!(v["acr_values"], LOA2);
    assert!(
        r.headers.get("www-authenticate").is_none(),
        "the SPA gets JSON only"
    );
    let cookie = ours(&b);
    let login_url = v["login_url"].as_str().expect("login_url").to_string();
    let (asked, _) = step_up(&env, &mut b, &login_url, &[("acr", LOA2)]).await;
    assert!(asked);
    assert_eq!(ours(&b), cookie);
    let (c, _) = got(&b.xhr(Method::GET, &env.url(&path)).await);
    assert_eq!(c["acr"], LOA2, "the resource token now says {c}");
}

#[tokio::test]
async fn a_resource_the_login_did_not_ask_for_is_refused_without_spending_the_refresh_token() {
    // oidc-provider rotates the refresh token before it checks the resource, so asking it for
    // a resource the grant does not hold would use the refresh token up and the next refresh
    // would revoke the grant. A route added after the user signed in must not do that.
    const LATE: &str = "https://late.test";
    let mut o = opts();
    let servers = o.idp_extra["resource_servers"]
        .as_array_mut()
        .expect("list");
    servers.push(serde_json::json!({"indicator": LATE, "scope": "late:read"}));
    let mut env = TestEnv::start_with(o).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    // The same deployment, one route more (a config change after this login).
    let late = format!(
        "{ROUTES}\n[[routes]]\nprefix = \"/late/\"\nupstream = \"http://@UPSTREAM@\"\nresource = \"{LATE}\"\n"
    );
    let i = env.start_extra_routes(&late).await;

    let r = b.xhr(Method::GET, &format!("{}/late/x", env.base(i))).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "resource_token_denied");
    assert_eq!(
        stat(&env, &["grant_errors", "invalid_target"]).await,
        0,
        "the IdP was not asked"
    );
    // The session lives on: its routes work, and after expiry its refresh is not reuse.
    assert_eq!(b.xhr(Method::GET, &env.url("/orders/x")).await.status, 200);
    env.advance(Duration::from_secs(700));
    let (c, _) = got(&b.xhr(Method::GET, &env.url("/orders/x")).await);
    assert_eq!(c["aud"], ORDERS);
    assert_eq!(b.xhr(Method::GET, &env.url("/recent/x")).await.status, 200);
    assert_eq!(stat(&env, &["refresh_reuse"]).await, 0);
}

#[tokio::test]
async fn an_idp_that_is_down_answers_503_with_retry_after_for_each_kind_and_keeps_the_session() {
    // Exchanged and per-resource tokens shorter-lived than the login's, so they fall due while
    // the login's token is still good.
    let mut o = opts();
    o.idp_extra["token_exchange"]["access_token_ttl"] = 120.into();
    for rs in o.idp_extra["resource_servers"]
        .as_array_mut()
        .expect("list")
    {
        rs["access_token_ttl"] = 120.into();
    }
    let env = TestEnv::start_with(o).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    for path in ["/ledger/x", "/orders/x"] {
        assert_eq!(b.xhr(Method::GET, &env.url(path)).await.status, 200);
    }
    let jobs = reqwest::Client::new();
    assert_eq!(
        jobs.get(env.url("/jobs/run"))
            .send()
            .await
            .expect("jobs")
            .status(),
        200
    );

    env.advance(Duration::from_secs(200));
    env.idp.outage("503").await;
    for (path, error) in [
        ("/ledger/x", "token_exchange_unavailable"),
        ("/orders/x", "token_refresh_unavailable"),
    ] {
        let r = b.xhr(Method::GET, &env.url(path)).await;
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], error, "{path}");
        assert!(r.headers.get("retry-after").is_some(), "{path}");
    }
    let r = jobs.get(env.url("/jobs/run")).send().await.expect("jobs");
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "client_token_unavailable");
    // The login's own token is still good: its routes work on, and the session is kept.
    assert_eq!(b.xhr(Method::GET, &env.url("/recent/x")).await.status, 200);

    // Back up, and past the cool-off: every kind gets its token again.
    env.idp.outage("none").await;
    env.advance(Duration::from_secs(60));
    for path in ["/ledger/x", "/orders/x"] {
        let r = b.xhr(Method::GET, &env.url(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    assert_eq!(
        jobs.get(env.url("/jobs/run"))
            .send()
            .await
            .expect("jobs")
            .status(),
        200
    );
}

/// Issue #30 item 8: a step-up the IdP did not satisfy, in the same IdP session as the live
/// session it meant to upgrade, came from that session's grant (oidc-provider issues both from
/// one, and revokes every token of a grant with any one of them): its tokens are not revoked,
/// and the live session keeps refreshing.
#[tokio::test]
async fn a_failed_step_up_leaves_the_grant_it_shares_with_the_live_session_alone() {
    let env = TestEnv::start_with(opts()).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let before = env.session_of(&b).await.expect("session");
    let r = b.xhr(Method::GET, &env.url("/gold/x")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let login_url = r.json()["login_url"]
        .as_str()
        .expect("login_url")
        .to_string();
    // The user signs in again, at the lower level: the step-up fails.
    let (asked, back) = step_up(&env, &mut b, &login_url, &[("acr", LOA1)]).await;
    assert!(asked, "the IdP asked for a new login");
    assert_eq!(back, "/app/page?error=step_up_failed");
    // The live session's grant stands: its refresh token refreshes.
    let refreshes = env.idp.stat(&["token_requests", "refresh_token"]).await;
    env.advance(Duration::from_secs(601));
    let r = b.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!(
        r.status, 200,
        "the live session's grant was revoked: {}",
        r.body
    );
    assert_eq!(
        env.idp.stat(&["token_requests", "refresh_token"]).await,
        refreshes + 1
    );
    let after = env.session_of(&b).await.expect("the session lives on");
    assert_eq!(after.created_at, before.created_at);
    let rt = after.tokens.refresh_token.expect("a refresh token");
    let v = env
        .idp
        .introspect(CLIENT_ID, crate::support::CLIENT_SECRET, rt.expose())
        .await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(env.idp.stat(&["revocations"]).await, 0, "nothing revoked");
}

/// Issue #30 item 11: Cloakroom's own (client-credentials) tokens are kept per provider,
/// issuer and client id: after a reload points `[oidc]` at another IdP, a client route gets a
/// token of the new IdP's, not the old one's still cached (in this process or the store).
#[tokio::test]
async fn client_tokens_are_kept_per_idp_and_client_so_a_reload_to_another_idp_gets_its_own() {
    let mut o = opts();
    o.second_idp = true;
    let env = TestEnv::start_with(o).await;
    let idp2 = env.idp2.as_ref().expect("second IdP");
    let plain = reqwest::Client::new();
    let call = || async {
        let r = plain.get(env.url("/jobs/run")).send().await.expect("call");
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.expect("json");
        (status, v)
    };
    let (st, v) = call().await;
    assert_eq!(st, 200, "{v}");
    let first = v["token_sha256"].clone();
    assert_eq!(
        env.idp
            .stat(&["token_requests", "client_credentials"])
            .await,
        1
    );
    // [oidc] is the second IdP now (the first one becomes the provider named "second").
    let (one, two) = (env.idp.issuer.clone(), idp2.issuer.clone());
    let port = env.apps[0].public_addr.port();
    let text = env
        .toml(port, &env.opts.extra_toml)
        .replacen(&format!("issuer = \"{one}\""), "issuer = \"@PRIMARY@\"", 1)
        .replacen(
            &format!("issuer = \"{two}\""),
            &format!("issuer = \"{one}\""),
            1,
        )
        .replacen("issuer = \"@PRIMARY@\"", &format!("issuer = \"{two}\""), 1);
    let config = cloakroom::config::Config::from_toml(&text, &env.env_vars(&env.keys))
        .unwrap_or_else(|e| panic!("config: {e}"));
    env.apps[0].reload(config).await.expect("reload");
    let (st, v) = call().await;
    assert_eq!(st, 200, "{v}");
    assert_ne!(
        v["token_sha256"], first,
        "the old IdP's token, after the reload"
    );
    assert_eq!(
        idp2.stat(&["token_requests", "client_credentials"]).await,
        1,
        "the new IdP was asked"
    );
}
