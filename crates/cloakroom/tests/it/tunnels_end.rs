//! SPEC §2 / issue #11: a WebSocket tunnel authenticated by a session ends with it — logout,
//! admin revoke, back-channel logout — on the instance that ended it and, through the
//! invalidation channel, on every other instance.

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv, ADMIN_TOKEN};
use reqwest::Method;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn open_tunnel(addr: SocketAddr, cookie: &str, origin: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Cookie: {cookie}\r\nOrigin: {origin}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("a response head")
            .expect("read");
        assert_eq!(n, 1, "closed during the head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(echoes(&mut s).await, "a fresh tunnel works");
    s
}

/// Whether the tunnel still carries bytes both ways.
async fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut got = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await,
        Ok(Ok(_))
    ) && &got == b"ping"
}

/// Whether the tunnel is closed (EOF or reset) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_end_with_their_session_on_every_instance() {
    let env = TestEnv::start_with(Opts {
        instances: 2,
        ..Opts::default()
    })
    .await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let mut b = Browser::new();
        env.login(&mut b).await;
        let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
        sessions.push((b, cookie));
    }
    let (a0, a1) = (env.apps[0].public_addr, env.apps[1].public_addr);
    let origin = |i: usize| env.base(i);
    let mut logout_t = open_tunnel(a0, &sessions[0].1, &origin(0)).await;
    let mut admin_t = open_tunnel(a0, &sessions[1].1, &origin(0)).await;
    let mut backchannel_t = open_tunnel(a1, &sessions[2].1, &origin(1)).await;
    let mut bystander = open_tunnel(a1, &sessions[3].1, &origin(1)).await;

    // Logout on the tunnel's own instance.
    let r = sessions[0]
        .0
        .xhr(Method::POST, &env.url("/auth/logout"))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        closed_within(&mut logout_t, Duration::from_secs(3)).await,
        "logout closes the tunnel"
    );

    // Admin revoke through the other instance.
    let s1 = env.session_of(&sessions[1].0).await.expect("session");
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::COOKIE, sessions[1].1.parse().unwrap());
    let handle = cloakroom::cookies::Cookies::from_config(&env.config(1, &env.keys, ""))
        .session_id(&headers)
        .expect("id")
        .handle();
    let r = reqwest::Client::new()
        .delete(env.admin_url(1, &format!("/admin/sessions/{handle}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 200);
    assert!(
        closed_within(&mut admin_t, Duration::from_secs(3)).await,
        "an admin revoke on instance 1 closes the tunnel on instance 0"
    );
    drop(s1);

    // Back-channel logout through instance 0 of a session whose tunnel is on instance 1.
    let s2 = env.session_of(&sessions[2].0).await.expect("session");
    let (_, status) = env
        .backchannel_logout(Some(&s2.sub), s2.sid.as_deref())
        .await;
    assert_eq!(status, 200);
    assert!(
        closed_within(&mut backchannel_t, Duration::from_secs(3)).await,
        "a back-channel logout closes the tunnel on the other instance"
    );
    // Another browser, another IdP session: untouched.
    assert!(env.session_of(&sessions[3].0).await.is_some());
    assert!(
        echoes(&mut bystander).await,
        "a live session's tunnel lives on"
    );
}

#[tokio::test]
async fn a_tunnel_ends_when_its_session_expires() {
    let env = TestEnv::start_with(Opts {
        idle_timeout: "10m",
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let mut t = open_tunnel(env.apps[0].public_addr, &cookie, &env.base(0)).await;
    let mut anon = {
        let mut other = Browser::new();
        env.login(&mut other).await;
        let c = format!("__Host-cloakroom={}", other.jar["__Host-cloakroom"]);
        (
            other,
            open_tunnel(env.apps[0].public_addr, &c, &env.base(0)).await,
        )
    };
    // Idle past its timeout (on Cloakroom's clock): nobody ends it, the sweep notices. The
    // other session is kept alive by a call just before.
    env.advance(Duration::from_secs(9 * 60));
    assert_eq!(
        anon.0.xhr(Method::GET, &env.url("/auth/user")).await.status,
        200
    );
    env.advance(Duration::from_secs(2 * 60));
    assert!(
        closed_within(&mut t, cloakroom::app::TUNNEL_SWEEP * 2).await,
        "the expired session's tunnel is closed by the sweep"
    );
    assert!(
        echoes(&mut anon.1).await,
        "the live session's tunnel lives on"
    );
}
