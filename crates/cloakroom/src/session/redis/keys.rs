//! The key scheme: the only code that knows Redis key names.
//!
//! Every key carries a hash tag (`{…}`) so the scheme is Redis-Cluster safe: each command
//! touches one slot.
//!
//! | key | type | TTL |
//! |---|---|---|
//! | `<prefix>:s:{<handle>}` | hash: `d` sealed session, `s` last-seen (unix s), `g` refresh generation | min(idle, absolute) expiry |
//! | `<prefix>:lock:{<handle>}` | string: refresh-lock owner token, or `cooloff:<unix ms>` | the lease (cool-off: twice its length) |
//! | `<prefix>:u:{<index key of sub>}` | set of handles | its longest-lived member's remaining life (+ linger), only ever extended |
//! | `<prefix>:sid:{<index key of sid>}` | set of handles | its longest-lived member's remaining life (+ linger), only ever extended |
//! | `<prefix>:once:{<hash>}` | string: a back-channel logout `jti` or a used login `state` | its TTL |
//! | `<prefix>:shared:{<hash>}` | string: a sealed value every instance shares (a client-credentials token, the SPA's state of a session, what a re-constituted session gets back) | until it is due |
//! | `<prefix>:expiry:{all}` | sorted set: handle → when the session expires (unix s), kept only with `session.reconstitute` (the reaper's schedule) | none |
//!
//! And one pub/sub channel, `<prefix>:invalidate` (its messages: `invalidation.rs`).
//!
//! A handle is a hash of the session id, an index key an HMAC of the issuer and `sub`/`sid`
//! (each IdP's users apart; earlier releases: of the value alone, still read): a key listing
//! shows neither a usable cookie nor who is logged in.

use crate::session::{Index, RecordRef};

/// The names under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A session's record.
    pub(super) fn session(&self, handle: &str) -> String {
        format!("{}:s:{{{handle}}}", self.prefix)
    }

    /// A session's refresh lock (or cool-off marker).
    pub(super) fn lock(&self, handle: &str) -> String {
        format!("{}:lock:{{{handle}}}", self.prefix)
    }

    /// An index set (`sub` or `sid`) named by its index key.
    pub(super) fn index(&self, index: Index, hash: &str) -> String {
        match index {
            Index::Sub => format!("{}:u:{{{hash}}}", self.prefix),
            Index::Sid => format!("{}:sid:{{{hash}}}", self.prefix),
        }
    }

    /// Every index set a record is entered in.
    pub(super) fn indexes(&self, r: &RecordRef) -> Vec<String> {
        r.entries().map(|(i, n)| self.index(i, n)).collect()
    }

    /// A once-only marker.
    pub(super) fn once(&self, hash: &str) -> String {
        format!("{}:once:{{{hash}}}", self.prefix)
    }

    /// A sealed value shared by every instance (not a session).
    pub(super) fn shared(&self, hash: &str) -> String {
        format!("{}:shared:{{{hash}}}", self.prefix)
    }

    /// The reaper's schedule (one key: one slot in a Cluster).
    pub(super) fn expiry(&self) -> String {
        format!("{}:expiry:{{all}}", self.prefix)
    }

    /// The invalidation channel.
    pub(super) fn invalidation_channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
}
