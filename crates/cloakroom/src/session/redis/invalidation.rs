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
//! | `!<id>:<seq>` | a subscriber's liveness marker: ignored by every other subscriber | [`RedisStore::watch_invalidations`], through the command connection |
//!
//! The subscriber proves itself current by its own markers: one is published every
//! [`PING_EVERY`] through the command connection, the path every other instance's messages
//! take, and when it comes back everything published before it has been applied
//! ([`SessionCache::verified`]). Markers that stop coming back for three times
//! [`MAX_STALENESS`] make it resubscribe; a lost connection marks the cache unverified.
//! Only a one-server topology has the channel (a cluster would route a channel name like a
//! key): elsewhere nothing is published and there is no cache.

use super::RedisStore;
use crate::session::cache::{SessionCache, MAX_STALENESS, PING_EVERY};
use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Instant;

/// The message saying `handle` changed (a refresh was written).
pub(super) fn changed(handle: &str) -> String {
    handle.to_string()
}

/// The message saying the session `handle` ended (its record is gone).
pub(super) fn ended(handle: &str) -> String {
    format!("~{handle}")
}

/// What one message on the channel says, to the subscriber whose markers start with
/// `markers`.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    /// This subscriber's marker number `seq` came back.
    OwnMarker(u64),
    /// `~<handle>`: the session ended.
    Ended(&'a str),
    /// `<handle>`: the session changed.
    Changed(&'a str),
    /// Another subscriber's marker.
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

impl RedisStore {
    /// The invalidation channel; `None` without a one-server topology (no cache to invalidate,
    /// and a cluster would route a channel name like a key).
    pub(super) fn invalidation_channel(&self) -> Option<String> {
        self.client
            .as_ref()
            .map(|_| self.keys.invalidation_channel())
    }

    /// Keeps `cache` exact (see `session/cache.rs`): subscribes to the invalidation channel,
    /// drops each published handle, and every [`PING_EVERY`] proves the subscription current.
    /// Runs until the cache is dropped. Only for one server (a cluster or Sentinel setup runs
    /// without the cache): returns false then.
    pub(crate) fn watch_invalidations(&self, cache: Weak<SessionCache>) -> bool {
        let (Some(client), Some(channel)) = (self.client.clone(), self.invalidation_channel())
        else {
            return false;
        };
        let timeout = self.timeout.min(MAX_STALENESS);
        let store = self.clone();
        // This subscriber's markers: `!<id>:<seq>`.
        let marker_prefix = format!("!{}:", &crate::crypto::random_token()[..12]);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                if cache.strong_count() == 0 {
                    return;
                }
                let subscribed = tokio::time::timeout(timeout, async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub.into_on_message())
                })
                .await;
                if let Ok(Ok(mut stream)) = subscribed {
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
                                match Message::parse(&payload, &marker_prefix) {
                                    Message::OwnMarker(n) => {
                                        // Our own marker came back through the channel every
                                        // instance publishes to: everything published before
                                        // it has been applied.
                                        while let Some(&(m, at)) = sent.front() {
                                            if m > n {
                                                break;
                                            }
                                            sent.pop_front();
                                            if m == n {
                                                c.verified(at);
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
                                    // Markers stopped coming back: this subscription is not
                                    // hearing the channel. Start again.
                                    break 'connected;
                                }
                                seq += 1;
                                let at = Instant::now();
                                sent.push_back((seq, at));
                                let marker = format!("{marker_prefix}{seq}");
                                let ch = channel.clone();
                                let _ = store
                                    .run(move |mut c| {
                                        Box::pin(async move {
                                            redis::cmd("PUBLISH").arg(ch).arg(marker).query_async::<()>(&mut c).await
                                        })
                                    })
                                    .await;
                            }
                        }
                    }
                    tracing::warn!("session cache: invalidation subscription lost; reconnecting");
                }
                if let Some(c) = cache.upgrade() {
                    c.unverified();
                }
                tokio::time::sleep(PING_EVERY).await;
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_kinds_of_message_are_told_apart() {
        let own = "!abc:";
        assert_eq!(Message::parse(&changed("h1"), own), Message::Changed("h1"));
        assert_eq!(Message::parse(&ended("h1"), own), Message::Ended("h1"));
        assert_eq!(Message::parse("!abc:7", own), Message::OwnMarker(7));
        assert_eq!(Message::parse("!xyz:7", own), Message::Other);
        assert_eq!(Message::parse("!abc:x", own), Message::Other);
    }
}
