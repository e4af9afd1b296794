//! One conformance suite for every [`Store`]: the memory store runs it in unit tests, real Redis
//! in the integration tests. Panics (assertions) on a violation.

use super::{
    now_unix, Index, LockState, RecordRef, RefreshWrite, Session, SessionId, Sessions, Store,
    Tokens,
};
use crate::crypto::{self, KeyRing};
use crate::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

fn now_ms() -> i64 {
    crate::clock::Clock::system().unix_ms()
}

/// The issuer the sessions here are of.
const ISS: &str = "https://idp.conformance.example";

fn session(sub: &str, sid: Option<&str>, last_seen_ago: i64) -> Session {
    let now = now_unix();
    Session {
        v: super::FORMAT_VERSION,
        sub: sub.into(),
        sid: sid.map(String::from),
        claims: serde_json::Map::new(),
        tokens: Tokens {
            access_token: Secret::new("at-conformance"),
            access_expires_at: Some(now + 300),
            access_lifetime: Some(300),
            refresh_token: Some(Secret::new("rt-conformance")),
            id_token: Secret::new("id-conformance"),
            dpop: None,
            derived: Default::default(),
            resources: None,
            bearer_header: Default::default(),
        },
        created_at: now - last_seen_ago,
        last_seen: now - last_seen_ago,
        absolute_expires_at: now + 3600,
        user_agent: None,
        ip: None,
        remembered: false,
        idle_timeout: None,
        reconstituted: false,
        provider: None,
        issuer: Some(ISS.into()),
        client_id: None,
        generation: 0,
    }
}

/// Runs every check against `store`, which must be empty of the subjects used here
/// (random ones are generated, so a shared Redis is fine).
///
/// # Panics
/// On any violation of the store contract.
pub async fn run(store: Store) {
    let entry = KeyRing::generate_entry(1);
    let keys = Arc::new(KeyRing::parse(&entry).unwrap_or_else(|e| panic!("key ring: {e}")));
    let sessions = Sessions::new(
        store,
        keys,
        Duration::from_secs(2),
        Duration::from_secs(3600),
    );
    let sub = format!("conformance-{}", crypto::random_token());
    let sid = format!("sid-{}", crypto::random_token());

    // 1. save / load roundtrip, missing is None
    let id = SessionId::generate();
    let h = id.handle();
    let s = session(&sub, Some(&sid), 0);
    assert!(sessions.save(&h, &s).await.expect("save"));
    let back = sessions.load(&h).await.expect("load").expect("present");
    assert_eq!(back.sub, sub);
    assert_eq!(back.tokens.access_token.expose(), "at-conformance");
    let missing = SessionId::generate().handle();
    assert!(sessions.load(&missing).await.expect("load").is_none());

    // 2. indexes by sub and sid find it; a second session of the same sub is found too
    let id2 = SessionId::generate();
    let h2 = id2.handle();
    assert!(sessions
        .save(&h2, &session(&sub, None, 0))
        .await
        .expect("save"));
    let mut by_sub: Vec<String> = sessions
        .find(Index::Sub, &[ISS], &sub)
        .await
        .expect("find")
        .live
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    by_sub.sort();
    let mut want = vec![h.clone(), h2.clone()];
    want.sort();
    assert_eq!(by_sub, want);
    let by_sid = sessions
        .find(Index::Sid, &[ISS], &sid)
        .await
        .expect("find")
        .live;
    assert_eq!(by_sid.len(), 1);
    assert_eq!(by_sid[0].0, h);

    // 3. delete removes record and index entries; a second delete is harmless
    assert!(sessions.delete(&h, &s).await.expect("delete"));
    assert!(!sessions.delete(&h, &s).await.expect("delete again"));
    assert!(sessions.load(&h).await.expect("load").is_none());
    assert!(sessions
        .find(Index::Sid, &[ISS], &sid)
        .await
        .expect("find")
        .live
        .is_empty());
    assert_eq!(
        sessions
            .find(Index::Sub, &[ISS], &sub)
            .await
            .expect("find")
            .live
            .len(),
        1
    );

    // 4. an already-expired session is not written
    let expired = session(&sub, None, 10);
    assert!(!sessions
        .save(&SessionId::generate().handle(), &expired)
        .await
        .expect("save"));

    // 5. TTL: idle timeout of 2 s, session last seen 1 s ago → gone after ~1 s more
    let id3 = SessionId::generate();
    let h3 = id3.handle();
    assert!(sessions
        .save(&h3, &session(&sub, None, 1))
        .await
        .expect("save"));
    assert!(sessions.load(&h3).await.expect("load").is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(sessions.load(&h3).await.expect("load").is_none());
    assert!(
        sessions
            .store()
            .get_session(&h3)
            .await
            .expect("raw get")
            .is_none(),
        "the store's own TTL must have removed the record"
    );

    // 6./7. remember_once is exactly-once under concurrency (a used login state, a logout jti)
    let marker = crypto::random_token();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = sessions.store().clone();
        let m = marker.clone();
        tasks.push(tokio::spawn(async move {
            store.remember_once(&m, Duration::from_secs(5)).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("join").expect("once") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);

    // 8. sliding and token updates touch only their own part, and never resurrect
    let id4 = SessionId::generate();
    let h4 = id4.handle();
    let mut s4 = session(&sub, None, 1);
    assert!(sessions.save(&h4, &s4).await.expect("save"));
    s4.tokens.access_token = Secret::new("at-refreshed");
    assert_eq!(
        sessions.write_refresh(&h4, &s4, "w").await.expect("write"),
        RefreshWrite::Written
    );
    let mut stale = session(&sub, None, 0); // a concurrent request's older copy, sliding
    stale.created_at = s4.created_at;
    assert!(sessions.touch(&h4, &stale).await.expect("touch"));
    let back = sessions.load(&h4).await.expect("load").expect("present");
    assert_eq!(
        back.tokens.access_token.expose(),
        "at-refreshed",
        "touch kept the new tokens"
    );
    assert_eq!(
        back.last_seen, stale.last_seen,
        "update kept the newer last_seen"
    );
    assert_eq!(
        back.generation, 1,
        "a refresh write moves the generation on"
    );
    // The fence: a writer that read generation 0 is refused now that it is 1.
    s4.tokens.access_token = Secret::new("at-late-writer");
    assert_eq!(
        sessions.write_refresh(&h4, &s4, "w").await.expect("write"),
        RefreshWrite::Fenced
    );
    // ...and so is a writer at the right generation while another owner holds the lock.
    s4.generation = 1;
    assert_eq!(
        sessions
            .store()
            .try_lock(&h4, "holder", Duration::from_secs(5), now_unix() * 1000)
            .await
            .expect("lock"),
        LockState::Acquired
    );
    assert_eq!(
        sessions
            .write_refresh(&h4, &s4, "intruder")
            .await
            .expect("write"),
        RefreshWrite::Fenced
    );
    assert_eq!(
        sessions
            .write_refresh(&h4, &s4, "holder")
            .await
            .expect("write"),
        RefreshWrite::Written
    );
    sessions
        .store()
        .unlock(&h4, "holder")
        .await
        .expect("unlock");
    // Ending reads and deletes atomically: what comes back is the record as it was (the last
    // refresh), not the caller's older copy.
    let old_copy = session(&sub, None, 1);
    let taken = sessions
        .take(&h4, Some(&old_copy))
        .await
        .expect("take")
        .expect("it existed")
        .expect("it opens");
    assert_eq!(taken.tokens.access_token.expose(), "at-late-writer");
    assert!(sessions.take(&h4, Some(&s4)).await.expect("take").is_none());
    s4.generation = 2;
    assert_eq!(
        sessions.write_refresh(&h4, &s4, "w").await.expect("write"),
        RefreshWrite::Gone,
        "no resurrection by a refresh write"
    );
    assert!(
        !sessions.touch(&h4, &s4).await.expect("touch"),
        "no resurrection by touch"
    );
    assert!(sessions
        .store()
        .get_session(&h4)
        .await
        .expect("get")
        .is_none());

    // 9. refresh locks: one holder at a time, released only by its holder, leased; a cool-off
    // marker answers every taker with the time left and is not released by unlock
    let store = sessions.store();
    let lh = crypto::random_token();
    let lock = |owner: &'static str, ms: u64| {
        let lh = lh.clone();
        async move {
            store
                .try_lock(&lh, owner, Duration::from_millis(ms), now_ms())
                .await
                .expect("lock")
        }
    };
    assert_eq!(lock("a", 5000).await, LockState::Acquired);
    assert_eq!(lock("b", 5000).await, LockState::Held);
    store.unlock(&lh, "b").await.expect("unlock");
    assert_eq!(lock("b", 5000).await, LockState::Held);
    store.unlock(&lh, "a").await.expect("unlock");
    assert_eq!(lock("b", 200).await, LockState::Acquired);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lock("c", 5000).await, LockState::Acquired, "lease ran out");
    store
        .cool_off(&lh, "not-the-owner", Duration::from_secs(5), now_ms())
        .await
        .expect("cool off");
    assert_eq!(
        lock("d", 5000).await,
        LockState::Held,
        "only the owner cools off"
    );
    store
        .cool_off(&lh, "c", Duration::from_millis(300), now_ms())
        .await
        .expect("cool off");
    store.unlock(&lh, "c").await.expect("unlock");
    match lock("d", 5000).await {
        LockState::CoolingOff(left) => assert!(left <= Duration::from_millis(300), "{left:?}"),
        other => panic!("expected a cool-off, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(lock("d", 5000).await, LockState::Acquired, "cool-off ended");
    store.unlock(&lh, "d").await.expect("unlock");
    // A cool-off ends by the lifecycle clock (which tests move), not by the store's own TTL.
    assert_eq!(lock("e", 5000).await, LockState::Acquired);
    store
        .cool_off(&lh, "e", Duration::from_secs(60), now_ms())
        .await
        .expect("cool off");
    assert!(matches!(
        store
            .try_lock(&lh, "d", Duration::from_secs(5), now_ms() + 61_000)
            .await
            .expect("lock"),
        LockState::Acquired
    ));
    store.unlock(&lh, "d").await.expect("unlock");

    // 10. remember_once: first true, then false until the TTL ends
    let jti = crypto::random_token();
    assert!(!store.remembered(&jti).await.expect("remembered"));
    assert!(store
        .remember_once(&jti, Duration::from_millis(300))
        .await
        .expect("once"));
    assert!(!store
        .remember_once(&jti, Duration::from_millis(300))
        .await
        .expect("once"));
    assert!(store.remembered(&jti).await.expect("remembered"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store
        .remember_once(&jti, Duration::from_millis(300))
        .await
        .expect("once"));

    // 10b. shared values: written, read back, replaced, gone after their TTL or deleted
    let sh = crypto::hash(&crypto::random_token());
    assert!(store.get_shared(&sh).await.expect("get").is_none());
    store
        .put_shared(&sh, b"one".to_vec(), Duration::from_millis(300))
        .await
        .expect("put");
    store
        .put_shared(&sh, b"two".to_vec(), Duration::from_millis(300))
        .await
        .expect("put");
    assert_eq!(
        store.get_shared(&sh).await.expect("get").as_deref(),
        Some(&b"two"[..])
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.get_shared(&sh).await.expect("get").is_none());
    // ... and deleted before their TTL; deleting what is gone is fine.
    store
        .put_shared(&sh, b"three".to_vec(), Duration::from_secs(60))
        .await
        .expect("put");
    store.delete_shared(&sh).await.expect("delete");
    assert!(store.get_shared(&sh).await.expect("get").is_none());
    store.delete_shared(&sh).await.expect("delete again");

    // 10c. the reaper's schedule: due in time order, rescheduled, removed
    let (x, y) = (crypto::random_token(), crypto::random_token());
    store.schedule(&x, 2_000).await.expect("schedule");
    store.schedule(&y, 1_000).await.expect("schedule");
    let due = store.due(1_500, 100).await.expect("due");
    assert!(due.contains(&y) && !due.contains(&x), "{due:?}");
    let due = store.due(2_000, 100).await.expect("due");
    let (ix, iy) = (
        due.iter().position(|h| *h == x).expect("x due"),
        due.iter().position(|h| *h == y).expect("y due"),
    );
    assert!(iy < ix, "earliest first");
    store.schedule(&y, 3_000).await.expect("reschedule");
    assert!(!store.due(2_500, 100).await.expect("due").contains(&y));
    store.unschedule(&x).await.expect("unschedule");
    store.unschedule(&y).await.expect("unschedule");
    assert!(store
        .due(i64::MAX / 2, 100)
        .await
        .expect("due")
        .iter()
        .all(|h| *h != x && *h != y));

    // 11. index pruning: an entry whose record is gone is pruned; a record this key ring
    // cannot open (another instance's newer key, first in its ring; ours second there) is
    // found through the index name of the key both rings share, reported, kept, and can still
    // be ended
    let sub2 = format!("conformance-prune-{}", crypto::random_token());
    let other_ring = Arc::new(
        KeyRing::parse(&format!("{},{entry}", KeyRing::generate_entry(7)))
            .unwrap_or_else(|e| panic!("key ring: {e}")),
    );
    let other = Sessions::new(
        store.clone(),
        other_ring,
        Duration::from_secs(2),
        Duration::from_secs(3600),
    );
    let foreign = SessionId::generate().handle();
    assert!(other
        .save(&foreign, &session(&sub2, None, 0))
        .await
        .expect("save"));
    let ghost = SessionId::generate().handle();
    store
        .put_session(
            &RecordRef {
                handle: ghost.clone(),
                subs: sessions.index_names(Index::Sub, Some(ISS), &sub2),
                sids: Vec::new(),
            },
            b"x".to_vec(),
            now_unix(),
            0,
            Duration::from_millis(1),
            Duration::from_secs(60),
        )
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let found = sessions
        .find(Index::Sub, &[ISS], &sub2)
        .await
        .expect("find");
    assert!(found.live.is_empty());
    assert_eq!(found.unreadable, vec![foreign.clone()], "kept, not pruned");
    // Another issuer's index is another: the same `sub` there finds nothing of this one's.
    let elsewhere = sessions
        .find(Index::Sub, &["https://other.conformance.example"], &sub2)
        .await
        .expect("find");
    assert!(
        elsewhere.live.is_empty()
            && elsewhere.unreadable.is_empty()
            && elsewhere.unscoped.is_empty(),
        "the same sub at another issuer is another user"
    );
    assert_eq!(
        store
            .index_members(
                Index::Sub,
                &sessions.index_names(Index::Sub, Some(ISS), &sub2)[0]
            )
            .await
            .expect("members"),
        vec![foreign.clone()],
        "the expired record's entry was pruned, the unreadable one kept"
    );
    assert!(
        matches!(
            sessions.take(&foreign, None).await.expect("take"),
            Some(None)
        ),
        "an unreadable record can still be ended"
    );
    assert!(other.load(&foreign).await.expect("load").is_none());
    // Index names are keyed hashes: neither the sub nor a plain hash of it appears.
    let name = &sessions.index_names(Index::Sub, Some(ISS), &sub2)[0];
    assert_ne!(name, &crypto::hash(&sub2));
    assert!(!name.contains(&sub2));
    assert_ne!(
        sessions.index_names(Index::Sub, Some(ISS), &sub2),
        sessions.index_names(Index::Sid, Some(ISS), &sub2),
        "sub and sid indexes never share a name"
    );
    assert_ne!(
        sessions.index_names(Index::Sub, Some(ISS), &sub2),
        sessions.index_names(Index::Sub, Some("https://other.conformance.example"), &sub2),
        "each issuer's users have their own index"
    );
    assert_ne!(
        sessions.index_names(Index::Sub, Some(ISS), &sub2),
        sessions.index_names(Index::Sub, None, &sub2),
        "the per-issuer names are never the unscoped ones of earlier releases"
    );

    store.ping().await.expect("ping");
    let _ = sessions.delete(&h2, &session(&sub, None, 0)).await;
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_conforms() {
        super::run(super::Store::Memory(
            super::super::memory::MemoryStore::new(),
        ))
        .await;
    }
}
