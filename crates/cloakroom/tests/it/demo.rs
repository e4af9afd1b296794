//! `cloakroom-demo` (issue #4): the development IdP, the demo API and the SPA behind Cloakroom,
//! in-process on port 0 with the memory store, driven by the test browser.

use crate::support::browser::{Browser, Resp};
use crate::support::query;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cloakroom::secret::Secret;
use cloakroom_demo::idp::{ClientRegistration, DevIdp, IdpOptions};
use cloakroom_demo::{self as demo, DemoError, DemoHandle, DemoOptions};
use reqwest::Method;
use sha2::Digest;
use std::time::Duration;

async fn start_demo(access_token_ttl: Duration) -> DemoHandle {
    start_demo_with(access_token_ttl, demo::DemoClientAuth::Secret).await
}

async fn start_demo_with(
    access_token_ttl: Duration,
    client_auth: demo::DemoClientAuth,
) -> DemoHandle {
    start_demo_opts(DemoOptions {
        port: 0,
        access_token_ttl,
        client_auth,
        ..DemoOptions::default()
    })
    .await
}

async fn start_demo_opts(opts: DemoOptions) -> DemoHandle {
    demo::start(opts)
        .await
        .unwrap_or_else(|e| panic!("the demo did not start: {e}"))
}

/// The claims of a JWT, unverified (tests only look).
fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

fn url(d: &DemoHandle, path: &str) -> String {
    format!("{}{path}", d.url.trim_end_matches('/'))
}

/// The hidden `interaction` field of the dev IdP's login page.
fn interaction_of(page: &Resp) -> String {
    let marker = "name=\"interaction\" value=\"";
    let start = page.body.find(marker).expect("interaction field") + marker.len();
    let len = page.body[start..].find('"').expect("end of value");
    page.body[start..start + len].to_string()
}

/// From the SPA's Log in button to the session cookie, through the dev IdP's login page.
async fn login(d: &DemoHandle, b: &mut Browser) {
    login_at(d, b, "", &d.idp).await;
}

/// As [`login`], through `/auth/login?return_to=/{extra}` and the login page of `idp`.
async fn login_at(d: &DemoHandle, b: &mut Browser, extra: &str, idp: &DevIdp) {
    let issuer = idp.issuer().to_string();
    let r = b
        .get(&url(d, &format!("/auth/login?return_to=/{extra}")))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let authorize = r.location();
    assert!(
        authorize.starts_with(&format!("{issuer}/authorize?")),
        "{authorize}"
    );
    let page = b.get(&authorize).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Development IdP — not for production"));
    assert!(
        page.body.contains(&format!(
            "Sign in to the <span id=\"idp-name\">{}</span>",
            idp.name()
        )),
        "{}",
        page.body
    );
    assert!(page.body.contains("value=\"alice\""), "prefilled user");

    let r = b
        .post_form(
            &format!("{issuer}/authorize/login"),
            &[
                ("interaction", &interaction_of(&page)),
                ("username", "alice"),
                ("password", "demo"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let idp_cookie = r
        .set_cookie(idp.session_cookie())
        .expect("IdP session cookie");
    assert!(idp_cookie.contains("HttpOnly"), "{idp_cookie}");
    let callback = r.location();
    // Each IdP comes back to its own provider's callback: the partners' is their own.
    let own = if extra.contains("provider=") {
        format!("/auth/callback/{}?", demo::PARTNER_PROVIDER)
    } else {
        "/auth/callback?".to_string()
    };
    assert!(callback.starts_with(&url(d, &own)), "{callback}");
    let q = query(&callback);
    assert_eq!(q["iss"], issuer, "RFC 9207 iss");
    assert!(q.contains_key("code") && q.contains_key("state"));

    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), "/");
    let session = r.set_cookie("cloakroom-demo").expect("session cookie");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(
        !session.contains("Secure"),
        "plain-http demo cookie: {session}"
    );
}

#[tokio::test]
async fn the_demo_tells_the_whole_story_and_no_token_reaches_the_browser() {
    let d = start_demo(Duration::from_secs(60)).await;
    let mut b = Browser::new();
    assert!(d.url.starts_with("http://localhost:"), "{}", d.url);

    // The SPA, through Cloakroom's `/` route.
    let r = b.get(&d.url).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.headers.contains_key("content-security-policy"));
    for id in [
        "login",
        "logout",
        "call-api",
        "user",
        "countdown",
        "warning",
        "api-status",
        "api-result",
    ] {
        assert!(r.body.contains(&format!("id=\"{id}\"")), "#{id}");
    }
    assert!(!r.body.contains("localStorage") && !r.body.contains("sessionStorage"));

    // Not logged in yet.
    let r = b.xhr(Method::GET, &url(&d, "/auth/user?slide=false")).await;
    assert_eq!(r.status, 401);
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 401);

    login(&d, &mut b).await;

    let r = b.xhr(Method::GET, &url(&d, "/auth/user?slide=false")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let u = r.json();
    assert_eq!(u["sub"], "alice");
    assert_eq!(u["claims"]["name"], "Alice Demo");
    assert_eq!(u["claims"]["email"], "alice@demo.test");
    let s = &u["session"];
    assert_eq!(
        s["idle_expires_at"].as_i64().unwrap() - s["created_at"].as_i64().unwrap(),
        300,
        "5 min idle timeout"
    );

    // The API saw a bearer from the dev IdP, and says so without echoing it.
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let api = r.json();
    assert_eq!(api["subject"], "alice");
    assert!(api["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "openid"));
    let expires_in = api["expires_in"].as_i64().unwrap();
    assert!((1..=60).contains(&expires_in), "{api}");
    assert!(api["expires_at"].as_i64().unwrap() > api["issued_at"].as_i64().unwrap());
    assert!(api["message"].as_str().unwrap().contains("alice"));
    assert!(!r.body.contains("eyJ"), "no JWT in the API answer");
    // DPoP (the demo's default): the token is bound to the session's key, and the API checked
    // the proof Cloakroom signed for this call with it.
    assert_eq!(api["dpop"]["bound"], true, "{api}");
    assert_eq!(api["dpop"]["proof_verified"], true, "{api}");
    assert!(api["message"].as_str().unwrap().contains("DPoP"), "{api}");
    // The same token without its proof, as a bearer token (say, stolen from a log), is refused.
    let issued = d.idp.issued_tokens();
    let stolen = issued
        .iter()
        .rev()
        .find(|t| {
            t.split('.').next().is_some_and(|h| {
                URL_SAFE_NO_PAD
                    .decode(h)
                    .is_ok_and(|h| String::from_utf8_lossy(&h).contains("at+jwt"))
            })
        })
        .expect("an access token was issued");
    for scheme in ["Bearer", "DPoP"] {
        let r = reqwest::Client::new()
            .get(format!("http://{}/api/whoami", d.api_addr))
            .header("authorization", format!("{scheme} {stolen}"))
            .send()
            .await
            .expect("demo API");
        assert_eq!(r.status(), 401, "{scheme} without a proof");
    }

    // Logout: Cloakroom ends the session and hands over the dev IdP's end_session URL.
    let r = b.xhr(Method::POST, &url(&d, "/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let end_session = r.json()["end_session_url"]
        .as_str()
        .expect("end_session_url")
        .to_string();
    assert!(
        end_session.starts_with(&format!("{}/end_session?", d.idp.issuer())),
        "{end_session}"
    );
    let q = query(&end_session);
    assert_eq!(q["post_logout_redirect_uri"], d.url);
    assert_eq!(q["client_id"], demo::CLIENT_ID);
    let hint = q["id_token_hint"].clone();
    assert!(b.jar.contains_key("devidp_session"));
    let r = b.get(&end_session).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), d.url);
    assert!(
        !b.jar.contains_key("devidp_session"),
        "IdP session cookie cleared"
    );

    // Logged out everywhere: the API says 401, and logging in again needs the password.
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = b.get(&url(&d, "/auth/login?return_to=/")).await;
    let r = b.get(&r.location()).await;
    assert_eq!(r.status, 200, "the IdP session is gone: login page again");

    // No token the IdP issued reached the browser, except the ID token as id_token_hint.
    let tokens = d.idp.issued_tokens();
    assert!(tokens.len() >= 3, "access, refresh and ID token");
    assert!(tokens.contains(&hint), "the hint is the ID token");
    let received = b.received.replace(&end_session, "");
    for t in &tokens {
        assert!(
            !received.contains(t.as_str()),
            "a token reached the browser"
        );
    }
    assert!(
        !received.contains("eyJ"),
        "no JWT-shaped string reached the browser"
    );
    // Cloakroom's logout revoked the access token at the IdP (RFC 7009).
    let api = d.idp.access_token_verifier();
    assert!(tokens.iter().all(|t| api.verify(t).is_err()));
    assert!(tokens
        .iter()
        .any(|t| matches!(api.verify(t), Err("token revoked"))));
    d.shutdown().await;
}

#[tokio::test]
async fn silent_login_needs_an_idp_session() {
    let d = start_demo(Duration::from_secs(60)).await;
    let mut b = Browser::new();

    // No IdP session: prompt=none comes back with login_required and no session.
    let r = b.get(&url(&d, "/auth/login?return_to=/&prompt=none")).await;
    assert_eq!(r.status, 302);
    assert_eq!(query(&r.location())["prompt"], "none");
    let r = b.get(&r.location()).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = r.location();
    let q = query(&callback);
    assert_eq!(q["error"], "login_required");
    assert_eq!(q["iss"], d.idp.issuer());
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.location(), "/?error=login_required");
    assert!(r.set_cookie("cloakroom-demo").is_none());

    // With an IdP session (Cloakroom logout only), prompt=none logs in without a page.
    login(&d, &mut b).await;
    let r = b.xhr(Method::POST, &url(&d, "/auth/logout")).await;
    assert_eq!(r.status, 200);
    let r = b.get(&url(&d, "/auth/login?return_to=/&prompt=none")).await;
    let r = b.get(&r.location()).await;
    assert_eq!(r.status, 302, "code at once: {}", r.body);
    let r = b.get(&r.location()).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.location(), "/");
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    d.shutdown().await;
}

#[tokio::test]
async fn cloakroom_refreshes_through_the_rotating_dev_idp_but_not_on_every_call() {
    // Tokens of 2 s against the demo's 20 s refresh skew: due at half-life (SPEC §3), so calls
    // in quick succession share one token, and an expired one is refreshed (rotating the
    // refresh token) before it is forwarded.
    let d = start_demo(Duration::from_secs(2)).await;
    let mut b = Browser::new();
    login(&d, &mut b).await;
    let issued = |r: &Resp| r.json()["issued_at"].as_i64().unwrap();
    let mut rounds = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let first = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
        assert_eq!(first.status, 200, "{}", first.body);
        let second = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
        assert_eq!(second.status, 200, "{}", second.body);
        assert_eq!(
            issued(&first),
            issued(&second),
            "a fresh token is not refreshed again on the next call"
        );
        rounds.push(issued(&first));
    }
    assert!(
        rounds[1] > rounds[0],
        "each expired token was refreshed through the rotating dev IdP: {rounds:?}"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn the_demo_spa_moves_other_hosts_to_localhost() {
    // Cloakroom sets X-Forwarded-Host from its public URL (a client's Host never reaches an
    // upstream), so the SPA moves a page opened as 127.0.0.1 to localhost itself.
    let d = start_demo(Duration::from_secs(60)).await;
    let mut b = Browser::new();
    let r = b
        .get(&format!("http://127.0.0.1:{}/", d.app.public_addr.port()))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains(r#"data-canonical-host="localhost""#),
        "{}",
        r.body
    );
    assert!(r
        .body
        .contains(r#"location.replace(location.href.replace(location.hostname, CANONICAL_HOST))"#));
    d.shutdown().await;
}

#[tokio::test]
async fn the_demo_sensitive_route_asks_for_a_recent_login_and_the_session_is_upgraded_in_place() {
    // max_age 2 s. Cloakroom and the dev IdP compare whole seconds (`now - auth_time <=
    // max_age`), so a call less than 2 s after the login it rests on always passes, whatever
    // the sub-second phase, and one sleep of 3.1 s always makes that login too old, for both.
    let d = start_demo_opts(DemoOptions {
        port: 0,
        sensitive_max_age: Duration::from_secs(2),
        ..DemoOptions::default()
    })
    .await;
    let mut b = Browser::new();
    let spa = b.get(&d.url).await;
    for id in [
        "sensitive",
        "sensitive-status",
        "sensitive-result",
        "step-up",
        "step-up-confirm",
        "auth-info",
    ] {
        assert!(spa.body.contains(&format!("id=\"{id}\"")), "#{id}");
    }
    login(&d, &mut b).await;
    let cookie = b.jar[demo::COOKIE_NAME].clone();

    // A fresh login: both routes answer.
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = b.xhr(Method::GET, &url(&d, "/api/sensitive")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.json();
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["what"], "a sensitive action");
    assert_eq!(first["acr"], demo::idp::DEMO_ACR);
    let t1 = first["auth_time"]
        .as_i64()
        .expect("auth_time from the access token");
    let r = b.xhr(Method::GET, &url(&d, "/auth/user?slide=false")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let u = r.json();
    assert_eq!(u["auth_time"], t1, "{u}");
    assert_eq!(u["acr"], demo::idp::DEMO_ACR, "{u}");
    assert_eq!(u["amr"], serde_json::json!(["pwd"]), "{u}");
    let created_at = u["session"]["created_at"].clone();

    tokio::time::sleep(Duration::from_millis(3100)).await;

    // The ordinary route does not care; the sensitive one asks for a step-up, as JSON.
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = b.xhr(Method::GET, &url(&d, "/api/sensitive")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.headers.get("location").is_none(), "never a redirect");
    let up = r.json();
    assert_eq!(up["error"], "step_up_required", "{up}");
    assert_eq!(up["max_age"], 2, "{up}");
    assert!(up["acr_values"].is_null(), "{up}");
    let login_url = up["login_url"].as_str().expect("login_url").to_string();
    assert!(login_url.starts_with("/auth/login?"), "{login_url}");
    assert_eq!(query(&format!("http://x{login_url}"))["max_age"], "2");
    assert!(!login_url.contains("return_to"), "{login_url}");

    // What the SPA's "Confirm it's you" does: login_url + return_to, through the dev IdP.
    let return_to = "/?step_up=sensitive";
    let step_up = format!(
        "{login_url}&return_to={}",
        url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
    );
    let r = b.get(&url(&d, &step_up)).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let authorize = r.location();
    assert!(
        authorize.starts_with(&format!("{}/authorize?", d.idp.issuer())),
        "{authorize}"
    );
    assert_eq!(query(&authorize)["max_age"], "2", "max_age goes to the IdP");
    let idp_cookie = b.jar["devidp_session"].clone();
    // The IdP session is 3 s old: the IdP asks for the password again.
    let page = b.get(&authorize).await;
    assert_eq!(page.status, 200, "the login page again: {}", page.body);
    assert!(page.body.contains("id=\"reauth\""), "{}", page.body);
    assert!(page.body.contains("at most 2 s old"), "{}", page.body);
    let r = b
        .post_form(
            &format!("{}/authorize/login", d.idp.issuer()),
            &[
                ("interaction", &interaction_of(&page)),
                ("username", "alice"),
                ("password", "demo"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_ne!(
        b.jar["devidp_session"], idp_cookie,
        "the IdP session cookie is renewed"
    );
    let callback = r.location();
    assert!(
        callback.starts_with(&url(&d, "/auth/callback?")),
        "{callback}"
    );
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), return_to);

    // Upgraded in place: the same cookie, the same session, a newer auth_time.
    assert_eq!(b.jar[demo::COOKIE_NAME], cookie, "the same session cookie");
    let r = b.xhr(Method::GET, &url(&d, "/api/sensitive")).await;
    assert_eq!(r.status, 200, "right after the new login: {}", r.body);
    let t2 = r.json()["auth_time"].as_i64().expect("auth_time");
    assert!(t2 >= t1 + 3, "a new login: {t1} then {t2}");
    let r = b.xhr(Method::GET, &url(&d, "/auth/user?slide=false")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let u = r.json();
    assert_eq!(u["auth_time"], t2, "{u}");
    assert_eq!(
        u["session"]["created_at"], created_at,
        "the same session: {u}"
    );

    // No token reached the browser on the way.
    let tokens = d.idp.issued_tokens();
    assert!(tokens.len() >= 6, "two logins' worth of tokens");
    for t in &tokens {
        assert!(
            !b.received.contains(t.as_str()),
            "a token reached the browser"
        );
    }
    assert!(
        !b.received.contains("eyJ"),
        "no JWT-shaped string reached the browser"
    );
    d.shutdown().await;
}

/// The latest access token (`typ` `at+jwt`) among `tokens`.
fn latest_access_token(tokens: &[String]) -> String {
    tokens
        .iter()
        .rev()
        .find(|t| {
            t.split('.').next().is_some_and(|h| {
                URL_SAFE_NO_PAD
                    .decode(h)
                    .is_ok_and(|h| String::from_utf8_lossy(&h).contains("at+jwt"))
            })
        })
        .expect("an access token was issued")
        .clone()
}

#[tokio::test]
async fn the_demo_signs_in_with_the_partner_idp_and_its_session_stays_there() {
    // Cloakroom's clock is moved forward to make the 60 s access token due (the IdPs and the
    // API keep real time, so nothing expires there while the test runs).
    let (clock, hand) = cloakroom::clock::Clock::manual();
    let d = start_demo_opts(DemoOptions {
        port: 0,
        clock: Some(clock),
        ..DemoOptions::default()
    })
    .await;
    let partner = &d.partner_idp;
    assert_ne!(partner.issuer(), d.idp.issuer(), "an IdP of its own");
    assert_eq!(partner.name(), demo::PARTNER_IDP_NAME);
    assert_ne!(
        partner.session_cookie(),
        d.idp.session_cookie(),
        "cookies ignore ports: the two IdPs' session cookies must differ"
    );
    let mut b = Browser::new();
    let spa = b.get(&d.url).await;
    assert!(
        spa.body.contains("id=\"login-partners\"") && spa.body.contains("id=\"provider\""),
        "the SPA has the partner sign-in button and shows the provider"
    );
    assert!(demo::CLIENT_JS.contains("provider="), "login({{provider}})");

    // First a session at the Demo IdP, ended at Cloakroom only: its IdP session stays.
    login(&d, &mut b).await;
    let u = b
        .xhr(Method::GET, &url(&d, "/auth/user?slide=false"))
        .await
        .json();
    assert_eq!(u["provider"], "default", "{u}");
    let r = b.xhr(Method::POST, &url(&d, "/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let demo_end_session = r.json()["end_session_url"]
        .as_str()
        .expect("end_session_url")
        .to_string();
    assert!(
        demo_end_session.starts_with(&format!("{}/end_session?", d.idp.issuer())),
        "{demo_end_session}"
    );
    let demo_idp_tokens = d.idp.issued_tokens().len();
    assert!(partner.issued_tokens().is_empty());

    // "Sign in with the Partner IdP": /auth/login?provider=partners, the partner's login page.
    login_at(
        &d,
        &mut b,
        &format!("&provider={}", demo::PARTNER_PROVIDER),
        partner,
    )
    .await;
    assert!(
        b.jar.contains_key(d.idp.session_cookie()) && b.jar.contains_key(partner.session_cookie()),
        "signed in at both IdPs, neither cookie overwrote the other: {:?}",
        b.jar.keys()
    );
    let r = b.xhr(Method::GET, &url(&d, "/auth/user?slide=false")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let u = r.json();
    assert_eq!(u["provider"], demo::PARTNER_PROVIDER, "{u}");
    assert_eq!(u["sub"], "alice");
    assert_eq!(u["claims"]["iss"], partner.issuer(), "{u}");

    // The API takes the Partner IdP's token, a plain bearer token (no DPoP for extra providers).
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let api = r.json();
    assert_eq!(api["subject"], "alice", "{api}");
    assert_eq!(api["issuer"], partner.issuer(), "{api}");
    assert_eq!(api["idp"], demo::PARTNER_IDP_NAME, "{api}");
    assert_eq!(api["dpop"]["bound"], false, "{api}");
    let at = latest_access_token(&partner.issued_tokens());
    let direct = |scheme: &str, token: &str| {
        reqwest::Client::new()
            .get(format!("http://{}/api/whoami", d.api_addr))
            .header("authorization", format!("{scheme} {token}"))
            .send()
    };
    let r = direct("Bearer", &at).await.expect("demo API");
    assert_eq!(r.status(), 200, "a partner token is a bearer token");
    let r = direct("DPoP", &at).await.expect("demo API");
    assert_eq!(r.status(), 401, "and not a DPoP-bound one");

    // The sensitive action is for the Demo IdP's users: Cloakroom refuses it, as JSON.
    let r = b.xhr(Method::GET, &url(&d, "/api/sensitive")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "provider_not_allowed", "{}", r.body);

    // Refresh goes to the Partner IdP: new tokens from it (access, ID and the rotated refresh
    // token), nothing from the Demo IdP.
    let before = partner.issued_tokens().len();
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        partner.issued_tokens().len(),
        before,
        "a fresh token is not refreshed"
    );
    // 60 s tokens, refreshed when less than the demo's 20 s refresh skew is left.
    hand.advance(Duration::from_secs(45));
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let api = r.json();
    assert_eq!(api["issuer"], partner.issuer(), "{api}");
    assert_eq!(
        partner.issued_tokens().len(),
        before + 3,
        "the Partner IdP issued an access, an ID and a refresh token"
    );
    assert_eq!(
        d.idp.issued_tokens().len(),
        demo_idp_tokens,
        "the Demo IdP was not asked for anything"
    );
    let refreshed = latest_access_token(&partner.issued_tokens());
    assert_ne!(refreshed, at, "a new access token");
    let at = refreshed;
    let partner_api = partner.access_token_verifier();
    partner_api.verify(&at).expect("the current token is good");

    // Logout: revocation at the Partner IdP, and its end_session URL.
    let r = b.xhr(Method::POST, &url(&d, "/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let end_session = r.json()["end_session_url"]
        .as_str()
        .expect("end_session_url")
        .to_string();
    assert!(
        end_session.starts_with(&format!("{}/end_session?", partner.issuer())),
        "{end_session}"
    );
    let q = query(&end_session);
    assert_eq!(q["client_id"], demo::PARTNER_CLIENT_ID);
    assert_eq!(q["post_logout_redirect_uri"], d.url);
    assert!(
        partner.issued_tokens().contains(&q["id_token_hint"]),
        "the partner's ID token is the hint"
    );
    // Revocation may run after the logout's answer: wait for it (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !matches!(partner_api.verify(&at), Err("token revoked")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the Partner IdP never saw the token revoked: {:?}",
            partner_api.verify(&at).map(|c| c.jti)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = b.get(&end_session).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), d.url);
    assert!(
        !b.jar.contains_key(partner.session_cookie()),
        "the Partner IdP's session cookie is cleared"
    );
    assert!(
        b.jar.contains_key(d.idp.session_cookie()),
        "and the Demo IdP's is not"
    );
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // The Demo IdP's session outlived the partner's logout: a silent login there works.
    let r = b.get(&url(&d, "/auth/login?return_to=/&prompt=none")).await;
    let r = b.get(&r.location()).await;
    assert_eq!(r.status, 302, "a code at once: {}", r.body);
    let r = b.get(&r.location()).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), "/");
    let u = b
        .xhr(Method::GET, &url(&d, "/auth/user?slide=false"))
        .await
        .json();
    assert_eq!(u["provider"], "default", "{u}");

    // No token of either IdP reached the browser, but the ID tokens as the logouts' hints.
    let received = b
        .received
        .replace(&end_session, "")
        .replace(&demo_end_session, "");
    for t in d.idp.issued_tokens().iter().chain(&partner.issued_tokens()) {
        assert!(
            !received.contains(t.as_str()),
            "a token reached the browser"
        );
    }
    d.shutdown().await;
}

#[tokio::test]
async fn the_demo_api_takes_bearer_tokens_only_from_idps_that_need_no_dpop() {
    use demo::api::{DemoApi, TrustedIdp};
    let (strict, lax, stranger) = (idp().await, idp().await, idp().await);
    let api = DemoApi::start(
        "127.0.0.1:0".parse().unwrap(),
        vec![
            TrustedIdp {
                name: "Strict IdP".into(),
                verifier: strict.access_token_verifier(),
                dpop_required: true,
            },
            TrustedIdp {
                name: "Lax IdP".into(),
                verifier: lax.access_token_verifier(),
                dpop_required: false,
            },
        ],
    )
    .await
    .expect("demo API");
    let (verifier, challenge) = pkce();
    // An unbound access token of each IdP (no DPoP proof at their token endpoints).
    let mut tokens = Vec::new();
    for idp in [&strict, &lax, &stranger] {
        let mut b = Browser::new();
        let body = exchange(idp, &verifier, &code(idp, &mut b, &challenge).await).await;
        assert_eq!(body["token_type"], "Bearer");
        tokens.push(body["access_token"].as_str().expect("token").to_string());
    }
    let call = |scheme: &'static str, token: String| {
        let addr = api.addr();
        async move {
            let r = reqwest::Client::new()
                .get(format!("http://{addr}/api/whoami"))
                .header("authorization", format!("{scheme} {token}"))
                .send()
                .await
                .expect("demo API");
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.expect("JSON"))
        }
    };
    let (status, body) = call("Bearer", tokens[1].clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["idp"], "Lax IdP", "{body}");
    assert_eq!(body["issuer"], lax.issuer(), "{body}");
    assert_eq!(body["dpop"]["bound"], false, "{body}");
    for (scheme, token, why) in [
        ("Bearer", &tokens[0], "this IdP's tokens must be DPoP-bound"),
        ("DPoP", &tokens[0], "this IdP's tokens must be DPoP-bound"),
        ("DPoP", &tokens[1], "not a DPoP-bound token"),
        ("Bearer", &tokens[2], "unknown signing key"),
    ] {
        let (status, body) = call(scheme, token.clone()).await;
        assert_eq!(status, 401, "{scheme}: {body}");
        assert_eq!(body["error"], "invalid_token", "{body}");
        assert_eq!(body["message"], why, "{body}");
    }
    api.shutdown().await;
    for idp in [strict, lax, stranger] {
        idp.shutdown().await;
    }
}

// ---------------------------------------------------------------- the dev IdP on its own

const SECRET: &str = "dev-idp-test-secret";
const REDIRECT: &str = "http://localhost:1/auth/callback";

async fn idp() -> DevIdp {
    DevIdp::start(
        "127.0.0.1:0".parse().unwrap(),
        IdpOptions::new(
            ClientRegistration {
                client_id: "spa".into(),
                client_secret: Secret::new(SECRET),
                redirect_uri: REDIRECT.into(),
                post_logout_redirect_uri: "http://localhost:1/".into(),
                jwks: None,
            },
            Duration::from_secs(60),
        ),
    )
    .await
    .expect("dev IdP")
}

fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode([7u8; 32]);
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn authorize_url(idp: &DevIdp, challenge: &str) -> String {
    let mut u = url::Url::parse(&format!("{}/authorize", idp.issuer())).unwrap();
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "spa")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "openid profile email offline_access")
        .append_pair("state", "st")
        .append_pair("nonce", "no")
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    u.to_string()
}

/// Logs alice in at the IdP and returns the code.
async fn code(idp: &DevIdp, b: &mut Browser, challenge: &str) -> String {
    let page = b.get(&authorize_url(idp, challenge)).await;
    let r = if page.status == 200 {
        b.post_form(
            &format!("{}/authorize/login", idp.issuer()),
            &[
                ("interaction", &interaction_of(&page)),
                ("username", "alice"),
                ("password", "demo"),
            ],
        )
        .await
    } else {
        page
    };
    let q = query(&r.location());
    assert_eq!(q["state"], "st");
    q["code"].clone()
}

async fn token(idp: &DevIdp, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/token", idp.issuer()))
        .basic_auth("spa", Some(SECRET))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON"))
}

#[tokio::test]
async fn the_dev_idp_rotates_refresh_tokens_and_revokes_the_grant_on_reuse() {
    let idp = idp().await;
    let verifier_api = idp.access_token_verifier();
    let mut b = Browser::new();
    let (verifier, challenge) = pkce();

    // A wrong PKCE verifier fails; the code is then still single-use.
    let c = code(&idp, &mut b, &challenge).await;
    let (status, body) = token(
        &idp,
        &[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &"x".repeat(43)),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // With the IdP session, the next code comes at once.
    let c = code(&idp, &mut b, &challenge).await;
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", c.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, first) = token(&idp, &exchange).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 60);
    let at1 = first["access_token"].as_str().unwrap().to_string();
    let rt1 = first["refresh_token"].as_str().unwrap().to_string();
    assert!(first["id_token"].as_str().unwrap().starts_with("eyJ"));
    let claims = verifier_api.verify(&at1).expect("access token verifies");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.client_id, "spa");

    // The code is single use.
    let (status, body) = token(&idp, &exchange).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // A fresh grant for the rotation test (the replay above revoked the first one).
    let c = code(&idp, &mut b, &challenge).await;
    let (_, fresh) = token(
        &idp,
        &[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    let rt_a = fresh["refresh_token"].as_str().unwrap().to_string();
    let at_a = fresh["access_token"].as_str().unwrap().to_string();
    assert_ne!(rt_a, rt1);
    assert!(
        verifier_api.verify(&at1).is_err(),
        "code replay revoked the first grant's access token"
    );

    let (status, second) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt_a)],
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let rt_b = second["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt_b, rt_a, "rotated");
    let at_b = second["access_token"].as_str().unwrap().to_string();
    verifier_api.verify(&at_b).expect("new access token");

    // Reusing the rotated-out token fails and revokes the whole grant.
    let (status, body) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt_a)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt_b)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "the newest token died with its grant"
    );
    assert_eq!(verifier_api.verify(&at_a).unwrap_err(), "token revoked");
    assert_eq!(verifier_api.verify(&at_b).unwrap_err(), "token revoked");

    // RFC 7009: revoking an access token (by jti) or a refresh token (its whole grant); 200
    // even for a token it does not know.
    let c = code(&idp, &mut b, &challenge).await;
    let (_, fresh) = token(
        &idp,
        &[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    let at = fresh["access_token"].as_str().unwrap();
    let rt = fresh["refresh_token"].as_str().unwrap();
    for (t, hint) in [(at, "access_token"), (rt, "refresh_token"), ("unknown", "")] {
        let r = reqwest::Client::new()
            .post(format!("{}/revoke", idp.issuer()))
            .form(&[
                ("token", t),
                ("token_type_hint", hint),
                ("client_id", "spa"),
                ("client_secret", SECRET),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(verifier_api.verify(at).unwrap_err(), "token revoked");
    let (status, _) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await;
    assert_eq!(status, 400);

    // Wrong client secret: 401 invalid_client.
    let r = reqwest::Client::new()
        .post(format!("{}/token", idp.issuer()))
        .basic_auth("spa", Some("wrong"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_client"
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn the_dev_idp_validates_authorization_requests_and_binds_loopback_only() {
    let refused = demo::idp::DevIdp::start(
        "0.0.0.0:0".parse().unwrap(),
        IdpOptions::new(
            ClientRegistration {
                client_id: "spa".into(),
                client_secret: Secret::new(SECRET),
                redirect_uri: REDIRECT.into(),
                post_logout_redirect_uri: "http://localhost:1/".into(),
                jwks: None,
            },
            Duration::from_secs(60),
        ),
    )
    .await;
    assert!(matches!(refused, Err(DemoError::NotLoopback(_))));

    let idp = idp().await;
    let mut b = Browser::new();
    let (_, challenge) = pkce();
    let good = authorize_url(&idp, &challenge);

    // A redirect_uri that is not registered: an error page, never a redirect.
    let r = b.get(&good.replace("localhost%3A1", "evil.example")).await;
    assert_eq!(r.status, 400);
    assert!(r.headers.get("location").is_none());

    // No PKCE: back to the client with invalid_request.
    let no_pkce = good.replace("code_challenge_method=S256", "code_challenge_method=plain");
    let r = b.get(&no_pkce).await;
    assert_eq!(r.status, 302);
    let q = query(&r.location());
    assert_eq!(q["error"], "invalid_request");
    assert_eq!(q["state"], "st");

    // Wrong password: the login page again, no cookie, no redirect.
    let page = b.get(&good).await;
    assert_eq!(page.status, 200);
    let r = b
        .post_form(
            &format!("{}/authorize/login", idp.issuer()),
            &[
                ("interaction", &interaction_of(&page)),
                ("username", "alice"),
                ("password", "nope"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.set_cookie("devidp_session").is_none());
    assert!(r.body.contains("Wrong user name or password"));

    // Discovery names every endpoint Cloakroom uses.
    let r = b
        .get(&format!(
            "{}/.well-known/openid-configuration",
            idp.issuer()
        ))
        .await;
    let m = r.json();
    assert_eq!(m["issuer"], idp.issuer());
    for k in [
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "revocation_endpoint",
        "end_session_endpoint",
    ] {
        assert!(m[k].as_str().unwrap().starts_with(idp.issuer()), "{k}");
    }
    assert_eq!(m["code_challenge_methods_supported"][0], "S256");
    let jwks = b.get(m["jwks_uri"].as_str().unwrap()).await.json();
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(jwks["keys"][0]["kid"].as_str().is_some());
    idp.shutdown().await;
}

#[tokio::test]
async fn the_demo_runs_with_private_key_jwt_and_its_idp_takes_nothing_else() {
    let d = start_demo_with(Duration::from_secs(60), demo::DemoClientAuth::PrivateKeyJwt).await;
    let mut b = Browser::new();
    login(&d, &mut b).await;
    let r = b.xhr(Method::GET, &url(&d, "/api/whoami")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["dpop"]["proof_verified"], true, "{}", r.body);
    // The dev IdP advertises the method, and refuses this client a secret (or nothing).
    let meta: serde_json::Value = reqwest::get(format!(
        "{}/.well-known/openid-configuration",
        d.idp.issuer()
    ))
    .await
    .expect("discovery")
    .json()
    .await
    .expect("json");
    assert!(meta["token_endpoint_auth_methods_supported"]
        .as_array()
        .expect("methods")
        .iter()
        .any(|m| m == "private_key_jwt"));
    let r = reqwest::Client::new()
        .post(format!("{}/token", d.idp.issuer()))
        .basic_auth(demo::CLIENT_ID, Some("guess"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .expect("token endpoint");
    assert_eq!(r.status(), 401);
    // A well-formed assertion signed by a key the IdP does not know is refused too.
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let now = cloakroom::session::now_unix();
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &serde_json::json!({
            "iss": demo::CLIENT_ID, "sub": demo::CLIENT_ID, "aud": d.idp.issuer(),
            "jti": "forged-1", "iat": now, "exp": now + 60,
        }),
        &jsonwebtoken::EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).expect("key"),
    )
    .expect("sign");
    let r = reqwest::Client::new()
        .post(format!("{}/token", d.idp.issuer()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", demo::CLIENT_ID),
            ("client_assertion_type", cloakroom::oidc::ASSERTION_TYPE),
            ("client_assertion", jwt.as_str()),
        ])
        .send()
        .await
        .expect("token endpoint");
    assert_eq!(r.status(), 401);
    d.shutdown().await;
}

/// Redeems `code` (with the [`pkce`] verifier) and returns the token response.
async fn exchange(idp: &DevIdp, verifier: &str, code: &str) -> serde_json::Value {
    let (status, body) = token(
        idp,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn the_dev_idp_honours_max_age_and_prompt_login_and_refuses_a_bad_max_age() {
    let idp = idp().await;
    let api = idp.access_token_verifier();
    let mut b = Browser::new();
    let (verifier, challenge) = pkce();
    let good = authorize_url(&idp, &challenge);
    // The first login: auth_time, acr and amr in the ID token, auth_time and acr in the
    // access token (RFC 9068).
    let first = exchange(&idp, &verifier, &code(&idp, &mut b, &challenge).await).await;
    let id1 = jwt_claims(first["id_token"].as_str().unwrap());
    let t1 = id1["auth_time"].as_i64().expect("auth_time");
    assert_eq!(id1["acr"], demo::idp::DEMO_ACR);
    assert_eq!(id1["amr"], serde_json::json!(["pwd"]));
    let at = api
        .verify(first["access_token"].as_str().unwrap())
        .expect("access token");
    assert_eq!(
        (at.auth_time, at.acr.as_deref()),
        (Some(t1), Some(demo::idp::DEMO_ACR))
    );

    // A login younger than max_age: the code at once.
    let r = b.get(&format!("{good}&max_age=3600")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(query(&r.location()).contains_key("code"));
    let r = b
        .get(&format!(
            "{good}&acr_values=urn%3Aother%20{}",
            demo::idp::DEMO_ACR
        ))
        .await;
    assert_eq!(r.status, 302, "acr_values is accepted: {}", r.body);

    // max_age=0 and prompt=login: the login page again, saying why; never without a page.
    for extra in ["&max_age=0", "&prompt=login", "&prompt=login&max_age=3600"] {
        let page = b.get(&format!("{good}{extra}")).await;
        assert_eq!(page.status, 200, "{extra}: {}", page.body);
        assert!(
            page.body.contains("id=\"reauth\""),
            "{extra}: {}",
            page.body
        );
    }
    let r = b.get(&format!("{good}&prompt=none&max_age=0")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(query(&r.location())["error"], "login_required");

    // Signing in again renews the IdP session: a new cookie, the same sid, a new auth_time.
    let idp_cookie = b.jar["devidp_session"].clone();
    let page = b.get(&format!("{good}&max_age=0")).await;
    let r = b
        .post_form(
            &format!("{}/authorize/login", idp.issuer()),
            &[
                ("interaction", &interaction_of(&page)),
                ("username", "alice"),
                ("password", "demo"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_ne!(b.jar["devidp_session"], idp_cookie);
    let second = exchange(&idp, &verifier, &query(&r.location())["code"]).await;
    let id2 = jwt_claims(second["id_token"].as_str().unwrap());
    assert_eq!(id2["sid"], id1["sid"], "the same IdP session");
    assert!(id2["auth_time"].as_i64().unwrap() >= t1);
    // The old cookie is no IdP session any more.
    let mut old = Browser::new();
    old.jar.insert("devidp_session".into(), idp_cookie);
    assert_eq!(
        old.get(&good).await.status,
        200,
        "the old cookie logs nobody in"
    );

    // A bad max_age goes back to the client as invalid_request.
    for bad in ["-1", "abc", "1.5", "1e3", "%2B5", "99999999999999999999"] {
        let r = b.get(&format!("{good}&max_age={bad}")).await;
        assert_eq!(r.status, 302, "{bad}: {}", r.body);
        let q = query(&r.location());
        assert_eq!(q["error"], "invalid_request", "{bad}");
        assert_eq!(q["state"], "st");
    }
    let r = b.get(&format!("{good}&max_age=1&max_age=2")).await;
    assert_eq!(query(&r.location())["error"], "invalid_request", "repeated");

    let meta = b
        .get(&format!(
            "{}/.well-known/openid-configuration",
            idp.issuer()
        ))
        .await
        .json();
    assert_eq!(
        meta["acr_values_supported"],
        serde_json::json!([demo::idp::DEMO_ACR])
    );
    idp.shutdown().await;
}
