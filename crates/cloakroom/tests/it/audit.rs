//! The audit trail (issue #18, part 3): login, logout with its scope, sessions ended (by the
//! user, an admin, a re-login) and admin actions are one structured event each on the `audit`
//! target, which `log.audit_file` routes to a file of its own — JSON lines, flushed before the
//! process exits, never a token — and out of the ordinary log. The real binary, the real IdP.

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv, ADMIN_TOKEN};
use reqwest::Method;

async fn login(env: &TestEnv, base: &str, b: &mut Browser) {
    let r = b.get(&format!("{base}/auth/login?return_to=/x")).await;
    let callback = env.idp.login(b, &r.location(), "alice", "wonderland").await;
    assert_eq!(b.get(&callback).await.status, 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_go_to_their_own_file_and_carry_no_secret() {
    let env = TestEnv::start_with(Opts {
        binary: true,
        ..Opts::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!(
        "cloakroom-audit-{}-{}",
        std::process::id(),
        crate::support::redis::free_port()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("audit.jsonl");
    let bin = env
        .spawn_binary_logging(
            "",
            &format!("level = \"info\"\naudit_file = \"{}\"", file.display()),
        )
        .await;
    let base = format!("http://{}", bin.addr);
    let mut a = Browser::new();
    a.user_agent = "audit-test-browser/1.0".into();
    login(&env, &base, &mut a).await;
    // Signing in again replaces the session (an ending with reason relogin).
    login(&env, &base, &mut a).await;
    let held = env.session_of(&a).await.expect("session");
    let mut other = Browser::new();
    login(&env, &base, &mut other).await;
    // An admin ends the other one; the user logs out everywhere.
    let admin = reqwest::Client::new();
    let list: serde_json::Value = admin
        .get(format!(
            "http://{}/admin/users/alice/sessions",
            bin.admin_addr
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let handle = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["user_agent"] != "audit-test-browser/1.0")
        .and_then(|s| s["handle"].as_str())
        .expect("the other session")
        .to_string();
    let r = admin
        .delete(format!("http://{}/admin/sessions/{handle}", bin.admin_addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 200);
    let r = a
        .send(
            a.request(Method::POST, &format!("{base}/auth/logout"))
                .header("x-csrf", "1")
                .body(r#"{"scope":"everywhere"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Stop the binary: the audit file is flushed before it exits.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &bin.pid().to_string()])
        .status();
    let mut bin = bin;
    let _ = bin.child.wait();
    let text = std::fs::read_to_string(&file).expect("the audit file");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |event: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .find(|e| e["event"] == event && f(e))
            .unwrap_or_else(|| panic!("no {event} event in:\n{text}"))
            .clone()
    };
    let l = find("login", &|e| e["user_agent"] == "audit-test-browser/1.0");
    assert_eq!(l["sub"], "alice");
    assert_eq!(l["ip"], "127.0.0.1");
    assert!(l["session"].as_str().is_some_and(|s| s.len() == 8));
    assert!(l["sid"].is_string(), "{l}");
    assert!(l["timestamp"].is_string());
    find("session_ended", &|e| e["reason"] == "relogin");
    find("session_ended", &|e| e["reason"] == "admin");
    find("admin", &|e| e["action"] == "end_session");
    find("logout", &|e| e["scope"] == "everywhere");
    find("session_ended", &|e| e["reason"] == "logout");
    assert!(events.iter().all(|e| e["target"] == "audit"), "{text}");

    // Never a token, and not in the ordinary log.
    for t in [&held.tokens.access_token, &held.tokens.id_token]
        .into_iter()
        .chain(held.tokens.refresh_token.as_ref())
    {
        assert!(!text.contains(t.expose()), "a token in the audit file");
    }
    let log = std::fs::read_to_string(&bin.stderr_path).expect("log");
    assert!(
        !log.contains("session created") && !log.contains("\"event\":\"login\""),
        "audit events stay out of the ordinary log:\n{log}"
    );
    assert!(
        log.contains("cloakroom listening"),
        "the ordinary log is still written"
    );
}
