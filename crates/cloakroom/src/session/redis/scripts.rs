//! The Lua scripts: each one a single atomic step on one slot (every key it names shares a
//! hash tag, see `keys.rs`).
//!
//! The invariant they share: **no store write brings back a deleted session.** Only
//! `put_session` (a login) creates a record; every other write to a session's record goes
//! through a script here that first checks the record still exists and does nothing if it is
//! gone, so a slide or a refresh racing a logout cannot resurrect it. Ending a session reads
//! and deletes it in one step, so the caller revokes exactly the tokens that were there.
//!
//! Scripts that change or end a session also publish on the invalidation channel in the same
//! step (`invalidation.rs`), so no instance's cache can miss the change. The text of each
//! script is its identity in Redis (`EVALSHA`): changing a byte changes its SHA.

/// The scripts, loaded once per store (clones of a [`redis::Script`] are cheap).
pub(super) struct Scripts {
    /// Slide: KEYS session; ARGV last-seen, TTL ms. Writes only `s` and the TTL, and only if
    /// the record exists (1), else nothing (0): a slide never resurrects a session, and never
    /// touches the tokens a concurrent refresh writes.
    pub(super) touch: redis::Script,
    /// Refresh write: KEYS session, lock; ARGV sealed blob, expected generation, owner,
    /// channel, message. Writes only `d` and `g`, and only if the record exists (else 0,
    /// gone), its `g` is still the generation the refresher read and no other owner holds the
    /// lock (else 2, fenced). Then bumps `g`, publishes the bare handle ("changed") unless the
    /// channel is empty, and returns 1 (written).
    pub(super) write_refresh: redis::Script,
    /// Take the refresh lock: KEYS lock; ARGV owner, lease ms, now (unix ms on the lifecycle
    /// clock). `{1}` acquired, `{0}` held by another owner, `{2, ms left}` cooling off. A
    /// cool-off marker carries its end on the lifecycle clock (`cooloff:<unix ms>`); its Redis
    /// TTL only collects it. Touches no session record.
    pub(super) try_lock: redis::Script,
    /// Turn the lock into a cool-off marker: KEYS lock; ARGV owner, marker TTL ms, its end
    /// (unix ms on the lifecycle clock). Only if `owner` still holds the lock: a lock another
    /// instance took over is never overwritten.
    pub(super) cool_off: redis::Script,
    /// Release the lock: KEYS lock; ARGV owner. Only if `owner` still holds it.
    pub(super) unlock: redis::Script,
    /// End a session: KEYS session; ARGV channel, message. Reads `d s g` and deletes the record
    /// in one step, then publishes `~<handle>` ("ended") unless the channel is empty. Nil when
    /// the record was already gone (nothing published then).
    pub(super) take: redis::Script,
    /// Enter a handle in an index: KEYS index; ARGV handle, TTL ms. Adds the handle, then
    /// moves the set's TTL to the given one only if that is later than the TTL it has (a set
    /// just created has none): an index is never shortened, so it outlives its longest-lived
    /// member whatever order the members were written in. (`EXPIRE … GT` would need Redis 7,
    /// and sets no TTL on a set that has none.)
    pub(super) index_add: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            touch: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then \
                   redis.call('HSET', KEYS[1], 's', ARGV[1]) \
                   redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end return 0",
            ),
            write_refresh: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
                 local g = tonumber(redis.call('HGET', KEYS[1], 'g') or '0') \
                 if g ~= tonumber(ARGV[2]) then return 2 end \
                 local l = redis.call('GET', KEYS[2]) \
                 if l and l ~= ARGV[3] then return 2 end \
                 redis.call('HSET', KEYS[1], 'd', ARGV[1], 'g', g + 1) \
                 if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end \
                 return 1",
            ),
            try_lock: redis::Script::new(
                "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end \
                 local v = redis.call('GET', KEYS[1]) \
                 if v and string.sub(v, 1, 8) == 'cooloff:' then \
                   local left = (tonumber(string.sub(v, 9)) or 0) - tonumber(ARGV[3]) \
                   if left > 0 then return {2, left} end \
                   redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return {1} end \
                 return {0}",
            ),
            cool_off: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   redis.call('SET', KEYS[1], 'cooloff:' .. ARGV[3], 'PX', ARGV[2]) return 1 end \
                 return 0",
            ),
            unlock: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   return redis.call('DEL', KEYS[1]) end return 0",
            ),
            take: redis::Script::new(
                "local v = redis.call('HMGET', KEYS[1], 'd', 's', 'g') \
                 if redis.call('DEL', KEYS[1]) == 0 then return false end \
                 if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end \
                 return v",
            ),
            index_add: redis::Script::new(
                "redis.call('SADD', KEYS[1], ARGV[1]) \
                 local t = redis.call('PTTL', KEYS[1]) \
                 if t < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
                 return 1",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Scripts;

    /// A script's text is its identity in Redis: an edit here must be deliberate.
    #[test]
    fn script_texts_are_pinned() {
        let s = Scripts::new();
        let hashes = [
            s.touch.get_hash(),
            s.write_refresh.get_hash(),
            s.try_lock.get_hash(),
            s.cool_off.get_hash(),
            s.unlock.get_hash(),
            s.take.get_hash(),
            s.index_add.get_hash(),
        ];
        assert_eq!(
            hashes,
            [
                "d019c357ac556d1d1fa4d40b4023982fa1c1b823",
                "853cc4af357a26e3da5f48f9594d4d633adfa038",
                "a07108f32668af8fa618b3008ae47aa7efd7c373",
                "c2e071a4573c312f5bb77fe7394085a19cd1f3b4",
                "6fbe84d1140fd2047394924af9d845b83c070bec",
                "2ea76682a018a11ef017fad9abb222246db0fb23",
                "d31ec1c0172e02ad493a498f7ffbf0085f25ef7f",
            ]
        );
    }
}
