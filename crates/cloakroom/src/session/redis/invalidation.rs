//! The invalidation channel: what the store publishes on `<prefix>:invalidate`, and the
//! subscriber that applies it to this instance's session cache (`session/cache.rs`).
//!
//! Three kinds of message, told apart by their first character (handles are base64url: never
//! `~` or `!`):
//!
//! | message | meaning | published by |
//! |---|---|---|
//! | `<handle>` | changed: drop the cached entry | the `write_refresh` script |
//! | `~<handle>` | ended: drop the entry and run the ended hooks (tunnels close) | the `take` script |
//! | `!<id>:<seq>` | a watcher's liveness marker: ignored by every other watcher | [`RedisStore::watch_invalidations`] |
//!
//! **Which servers.** The scripts publish on the server that holds the session: the one
//! server, the master (Sentinel), or the master that owns the session's slot (Cluster).
//! [`Source::publishers`](super::topology::Source::publishers) names those servers, and one
//! *watcher* per server subscribes on that server itself. (A cluster forwards a plain
//! `PUBLISH` to every node, so one subscription anywhere would hear everything; but messages
//! from different nodes arrive over different links, in no common order, so a marker from
//! one node would prove nothing about another's. On its own server a message is delivered in
//! the order it was published: that is what a marker proves.)
//!
//! **Proof.** Every [`PING_EVERY`] a watcher publishes a marker of its own on its server,
//! on a connection of its own, and when its subscription delivers that marker, everything
//! that server published before it has been applied. A *supervisor* asks the topology for the
//! publishing servers every [`PING_EVERY`], starts a watcher for a new one and stops one for a
//! server that no longer publishes, and proves the cache current
//! ([`SessionCache::verified`]) as of the oldest of the watchers' proofs and of the moment it
//! asked for the servers. A watcher that lost its subscription, a changed set of servers
//! (a failover, a master added to the cluster) or an unanswered question make the cache
//! unverified or let its proof age: within [`MAX_STALENESS`] nothing is served from it.
//! Markers that stop coming back for three times [`MAX_STALENESS`] make a watcher
//! resubscribe.

use super::topology::Server;
use super::RedisStore;
use crate::session::cache::{SessionCache, MAX_STALENESS, PING_EVERY};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// The message saying `handle` changed (a refresh was written).
pub(super) fn changed(handle: &str) -> String {
    handle.to_string()
}

/// The message saying the session `handle` ended (its record is gone).
pub(super) fn ended(handle: &str) -> String {
    format!("~{handle}")
}

/// What one message on the channel says, to the watcher whose markers start with `markers`.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    /// This watcher's marker number `seq` came back.
    OwnMarker(u64),
    /// `~<handle>`: the session ended.
    Ended(&'a str),
    /// `<handle>`: the session changed.
    Changed(&'a str),
    /// Another watcher's marker.
    Other,
}

impl<'a> Message<'a> {
    fn parse(payload: &'a str, markers: &str) -> Self {
        if let Some(seq) = payload
            .strip_prefix(markers)
            .and_then(|n| n.parse::<u64>().ok())
        {
            Message::OwnMarker(seq)
        } else if let Some(handle) = payload.strip_prefix('~') {
            Message::Ended(handle)
        } else if payload.starts_with('!') {
            Message::Other
        } else {
            Message::Changed(payload)
        }
    }
}

/// What a watcher has proved, for the supervisor.
#[derive(Default)]
struct Proof {
    /// When the last marker that came back was sent; `None` while (re)subscribing.
    sent: Option<Instant>,
    /// The subscription was lost (or restarted) since the supervisor last looked.
    lost: bool,
}

/// A running watcher; dropping it stops the task.
struct Watcher {
    proof: Arc<Mutex<Proof>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RedisStore {
    /// The invalidation channel.
    pub(super) fn invalidation_channel(&self) -> String {
        self.keys.invalidation_channel()
    }

    /// Keeps `cache` exact (see `session/cache.rs` and this module): watches every server that
    /// publishes invalidations, drops each published handle, and proves the cache current.
    /// Runs until the cache is dropped.
    pub(crate) fn watch_invalidations(&self, cache: Weak<SessionCache>) {
        let timeout = self.timeout.min(MAX_STALENESS);
        let store = self.clone();
        let id = crate::crypto::random_token()[..12].to_string();
        tokio::spawn(async move {
            let mut watchers: HashMap<String, Watcher> = HashMap::new();
            let mut started = 0u64;
            // When the servers were last named; proofs are as of this at the oldest.
            let mut asked: Option<Instant> = None;
            let proved = Arc::new(tokio::sync::Notify::new());
            let mut tick = tokio::time::interval(PING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let mut changed = false;
                tokio::select! {
                    _ = tick.tick() => {
                        if cache.strong_count() == 0 {
                            return;
                        }
                        let now = Instant::now();
                        let Ok(Ok(servers)) =
                            tokio::time::timeout(timeout, store.source.publishers()).await
                        else {
                            // Nobody can say which servers publish: no proof this round.
                            continue;
                        };
                        asked = Some(now);
                        let before = watchers.len();
                        watchers.retain(|name, _| servers.iter().any(|s| &s.name == name));
                        changed = watchers.len() != before;
                        for server in servers {
                            if watchers.contains_key(&server.name) {
                                continue;
                            }
                            changed = true;
                            started += 1;
                            let proof = Arc::new(Mutex::new(Proof::default()));
                            let name = server.name.clone();
                            let task = tokio::spawn(watch(
                                server,
                                store.invalidation_channel(),
                                format!("!{id}-{started}:"),
                                (proof.clone(), proved.clone()),
                                cache.clone(),
                                timeout,
                            ));
                            watchers.insert(name, Watcher { proof, task });
                        }
                        if changed && before > 0 {
                            tracing::info!(
                                servers = watchers.len(),
                                "session cache: the Redis servers that publish invalidations changed"
                            );
                        }
                    }
                    () = proved.notified() => {}
                }
                let Some(c) = cache.upgrade() else { return };
                let mut lost = changed;
                let mut oldest = asked.filter(|_| !watchers.is_empty());
                for w in watchers.values() {
                    let mut p = w.proof.lock().unwrap_or_else(PoisonError::into_inner);
                    lost |= std::mem::take(&mut p.lost);
                    oldest = oldest.zip(p.sent).map(|(a, b)| a.min(b));
                }
                if lost {
                    c.unverified();
                }
                if let Some(at) = oldest {
                    c.verified(at);
                }
            }
        });
    }
}

/// One server's watcher: subscribes on it, applies what it publishes, and every
/// [`PING_EVERY`] publishes a marker (`<markers><seq>`) on it to prove the subscription
/// current. Resubscribes when the connection is lost or the markers stop coming back.
async fn watch(
    server: Server,
    channel: String,
    markers: String,
    (proof, proved): (Arc<Mutex<Proof>>, Arc<tokio::sync::Notify>),
    cache: Weak<SessionCache>,
    timeout: Duration,
) {
    use futures_util::StreamExt;
    // Records a proof (or the loss of the subscription) and wakes the supervisor.
    let set = |sent: Option<Instant>, lost: bool| {
        {
            let mut p = proof.lock().unwrap_or_else(PoisonError::into_inner);
            p.sent = sent.max(p.sent).filter(|_| !lost);
            p.lost |= lost;
        }
        proved.notify_one();
    };
    loop {
        if cache.strong_count() == 0 {
            return;
        }
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = server.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            let publisher = server.client.get_multiplexed_async_connection().await?;
            Ok::<_, redis::RedisError>((pubsub.into_on_message(), publisher))
        })
        .await;
        if let Ok(Ok((mut stream, mut publisher))) = subscribed {
            let mut tick = tokio::time::interval(PING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent: VecDeque<(u64, Instant)> = VecDeque::new();
            let mut seq = 0u64;
            'connected: loop {
                tokio::select! {
                    msg = stream.next() => {
                        let Some(msg) = msg else { break 'connected };
                        let Some(c) = cache.upgrade() else { return };
                        let Ok(payload) = msg.get_payload::<String>() else { continue };
                        match Message::parse(&payload, &markers) {
                            Message::OwnMarker(n) => {
                                // Our own marker came back from the server that publishes the
                                // invalidations: everything it published before has been
                                // applied.
                                while let Some(&(m, at)) = sent.front() {
                                    if m > n {
                                        break;
                                    }
                                    sent.pop_front();
                                    if m == n {
                                        set(Some(at), false);
                                    }
                                }
                            }
                            Message::Ended(handle) => {
                                c.invalidate(handle);
                                c.ended(handle);
                            }
                            Message::Changed(handle) => c.invalidate(handle),
                            Message::Other => {}
                        }
                    }
                    _ = tick.tick() => {
                        if sent.front().is_some_and(|(_, at)| at.elapsed() > MAX_STALENESS * 3) {
                            // Markers stopped coming back: this subscription is not hearing
                            // the channel. Start again.
                            break 'connected;
                        }
                        seq += 1;
                        sent.push_back((seq, Instant::now()));
                        let mut publish = redis::cmd("PUBLISH");
                        publish.arg(&channel).arg(format!("{markers}{seq}"));
                        let _ = tokio::time::timeout(
                            timeout,
                            publish.query_async::<()>(&mut publisher),
                        )
                        .await;
                    }
                }
            }
            tracing::warn!(
                server = %server.name,
                "session cache: invalidation subscription lost; reconnecting"
            );
        }
        set(None, true);
        tokio::time::sleep(PING_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_kinds_of_message_are_told_apart() {
        let own = "!abc-1:";
        assert_eq!(Message::parse(&changed("h1"), own), Message::Changed("h1"));
        assert_eq!(Message::parse(&ended("h1"), own), Message::Ended("h1"));
        assert_eq!(Message::parse("!abc-1:7", own), Message::OwnMarker(7));
        assert_eq!(Message::parse("!abc-12:7", own), Message::Other);
        assert_eq!(Message::parse("!xyz-1:7", own), Message::Other);
        assert_eq!(Message::parse("!abc-1:x", own), Message::Other);
    }
}
