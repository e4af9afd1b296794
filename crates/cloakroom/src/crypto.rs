//! The server key ring: AES-256-GCM sealing for cookies and for sessions at rest.
//!
//! Owns: key parsing, `seal`/`open`, the envelope format. Never does I/O.
//!
//! Envelope (SPEC §1, §4): `version (1 byte) ‖ key id (1 byte) ‖ nonce (12 bytes) ‖ ciphertext+tag`.
//! The caller supplies the AAD: the cookie name for cookies, the Redis key for records, so a
//! sealed value cannot be moved to another cookie or another key. The first key seals; every key
//! opens, so a new key can be put first without logging anybody out.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use std::fmt;

const VERSION: u8 = 1;
const HEADER: usize = 2 + 12;
const TAG: usize = 16;

/// One AES-256 key with its one-byte id.
pub struct Key {
    id: u8,
    cipher: Aes256Gcm,
    /// HMAC key for store index names, derived from this key (never the key itself).
    index: [u8; 32],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id={}, [redacted])", self.id)
    }
}

/// The ordered key ring: the first key seals, all keys open.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Key>,
}

/// Why a key ring string was refused. Never contains key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyRingError {
    #[error("no key given")]
    Empty,
    #[error("entry {0}: expected `<id>:<base64 of 32 bytes>` with an id from 1 to 255")]
    Malformed(usize),
    #[error("entry {0}: the key is not 32 bytes of base64")]
    BadKey(usize),
    #[error("key id {0} appears twice")]
    DuplicateId(u8),
}

impl KeyRing {
    /// Parses `CLOAKROOM_COOKIE_KEYS`: `id:base64,id:base64,…`, first one seals.
    ///
    /// # Errors
    /// A [`KeyRingError`] naming the entry; the message never echoes key material.
    pub fn parse(s: &str) -> Result<Self, KeyRingError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, entry) in s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let n = i + 1;
            let (id, b64) = entry.split_once(':').ok_or(KeyRingError::Malformed(n))?;
            let id: u8 = id.trim().parse().map_err(|_| KeyRingError::Malformed(n))?;
            if id == 0 {
                return Err(KeyRingError::Malformed(n));
            }
            let raw = STANDARD
                .decode(b64.trim())
                .or_else(|_| URL_SAFE_NO_PAD.decode(b64.trim()))
                .map_err(|_| KeyRingError::BadKey(n))?;
            if raw.len() != 32 {
                return Err(KeyRingError::BadKey(n));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyRingError::DuplicateId(id));
            }
            let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| KeyRingError::BadKey(n))?;
            let index = hmac_sha256(&raw, b"cloakroom index key v1");
            keys.push(Key { id, cipher, index });
        }
        if keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        Ok(Self { keys })
    }

    /// A fresh random key entry `id:base64`, as printed by `cloakroom keygen`.
    #[must_use]
    pub fn generate_entry(id: u8) -> String {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        format!("{id}:{}", STANDARD.encode(raw))
    }

    /// Seals `plaintext` under the first key, binding `aad`.
    #[must_use]
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER + plaintext.len() + TAG);
        out.push(VERSION);
        out.push(key.id);
        out.extend_from_slice(&nonce);
        // Encryption with a valid 32-byte key and 12-byte nonce cannot fail for inputs below the
        // AES-GCM length limit (64 GiB); our inputs are at most a few KiB.
        match key.cipher.encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        ) {
            Ok(ct) => out.extend_from_slice(&ct),
            Err(_) => unreachable!("AES-GCM encryption of a small buffer cannot fail"),
        }
        out
    }

    /// Opens a sealed value; `None` for anything that does not authenticate under a known key.
    #[must_use]
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < HEADER + TAG || sealed[0] != VERSION {
            return None;
        }
        let key = self.keys.iter().find(|k| k.id == sealed[1])?;
        let nonce = Nonce::try_from(&sealed[2..HEADER]).ok()?;
        key.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[HEADER..],
                    aad,
                },
            )
            .ok()
    }

    /// Seals and base64url-encodes (no padding): the cookie value form.
    #[must_use]
    pub fn seal_text(&self, aad: &[u8], plaintext: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.seal(aad, plaintext))
    }

    /// Opens a base64url cookie value, refusing anything longer than `max_len` characters first.
    #[must_use]
    pub fn open_text(&self, aad: &[u8], text: &str, max_len: usize) -> Option<Vec<u8>> {
        if text.len() > max_len {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
        self.open(aad, &raw)
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    // HMAC takes keys of any length: new_from_slice cannot fail for it.
    let mut m = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(data);
    m.finalize().into_bytes().into()
}

impl KeyRing {
    /// The store index names of `value` (a `sub` or `sid`, told apart by `kind`), one per key
    /// of the ring, the first key's first: keyed hashes, so a key listing shows neither who is
    /// logged in nor on how many devices. Entries are written under every name and looked up
    /// under every name, so an instance whose ring shares one key with the writer's (a
    /// rotation in progress) still finds the session.
    #[must_use]
    pub fn index_names(&self, kind: &str, value: &str) -> Vec<String> {
        let mut data = Vec::with_capacity(kind.len() + 1 + value.len());
        data.extend_from_slice(kind.as_bytes());
        data.push(0);
        data.extend_from_slice(value.as_bytes());
        self.keys
            .iter()
            .map(|k| URL_SAFE_NO_PAD.encode(hmac_sha256(&k.index, &data)))
            .collect()
    }
    /// The index names of `value` within `scope` (an issuer), one per key: an HMAC over
    /// `kind@iss`, NUL, the scope's length (8 bytes, big-endian), the scope, `|`, the value.
    /// The length prefix makes the split unambiguous whatever either string holds, and the
    /// kind's `@iss` keeps every name apart from the unscoped (pre-upgrade) ones of
    /// [`KeyRing::index_names`].
    #[must_use]
    pub fn scoped_index_names(&self, kind: &str, scope: &str, value: &str) -> Vec<String> {
        let mut data = Vec::with_capacity(kind.len() + 14 + scope.len() + value.len());
        data.extend_from_slice(kind.as_bytes());
        data.extend_from_slice(b"@iss");
        data.push(0);
        data.extend_from_slice(&(scope.len() as u64).to_be_bytes());
        data.extend_from_slice(scope.as_bytes());
        data.push(b'|');
        data.extend_from_slice(value.as_bytes());
        self.keys
            .iter()
            .map(|k| URL_SAFE_NO_PAD.encode(hmac_sha256(&k.index, &data)))
            .collect()
    }
    /// Which keys, in which order, without revealing them: each key's id and a keyed hash of
    /// nothing (tells two rings apart, e.g. for a reload; never key material).
    #[must_use]
    pub fn fingerprint(&self) -> String {
        self.keys
            .iter()
            .map(|k| {
                format!(
                    "{}:{}",
                    k.id,
                    URL_SAFE_NO_PAD.encode(&hmac_sha256(&k.index, b"fingerprint")[..8])
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// 32 random bytes from the OS CSPRNG, base64url: session ids, `state`, `nonce`, binding tags.
#[must_use]
pub fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// SHA-256, base64url: how secrets (session ids, `state`, `sub`) become store keys.
#[must_use]
pub fn hash(s: &str) -> String {
    use sha2::Digest;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(entries: &[&str]) -> KeyRing {
        KeyRing::parse(&entries.join(",")).expect("valid ring")
    }

    #[test]
    fn roundtrip_and_aad_binding() {
        let r = ring(&[&KeyRing::generate_entry(1)]);
        let s = r.seal(b"name", b"hello");
        assert_eq!(r.open(b"name", &s).as_deref(), Some(&b"hello"[..]));
        assert_eq!(r.open(b"other", &s), None);
    }

    #[test]
    fn tampered_truncated_version_and_wrong_key_fail() {
        let r = ring(&[&KeyRing::generate_entry(1)]);
        let s = r.seal(b"n", b"payload");
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert_eq!(r.open(b"n", &t), None, "flip at byte {i}");
        }
        assert_eq!(r.open(b"n", &s[..s.len() - 1]), None);
        assert_eq!(r.open(b"n", &[]), None);
        let other = ring(&[&KeyRing::generate_entry(1)]);
        assert_eq!(other.open(b"n", &s), None);
    }

    #[test]
    fn rotation_old_key_still_opens() {
        let old = KeyRing::generate_entry(1);
        let new = KeyRing::generate_entry(2);
        let before = ring(&[&old]);
        let s = before.seal_text(b"c", b"id");
        let after = ring(&[&new, &old]);
        assert_eq!(after.open_text(b"c", &s, 200).as_deref(), Some(&b"id"[..]));
        let s2 = after.seal_text(b"c", b"id");
        assert_eq!(before.open_text(b"c", &s2, 200), None);
    }

    #[test]
    fn oversized_text_is_refused_before_decoding() {
        let r = ring(&[&KeyRing::generate_entry(1)]);
        let s = r.seal_text(b"c", b"id");
        assert!(r.open_text(b"c", &s, s.len()).is_some());
        assert!(r.open_text(b"c", &s, s.len() - 1).is_none());
        assert!(r.open_text(b"c", "!!!not base64!!!", 200).is_none());
    }

    #[test]
    fn parse_errors_name_the_entry_and_never_the_key() {
        assert_eq!(KeyRing::parse("").unwrap_err(), KeyRingError::Empty);
        assert_eq!(
            KeyRing::parse("nocolon").unwrap_err(),
            KeyRingError::Malformed(1)
        );
        let good = KeyRing::generate_entry(3);
        assert_eq!(
            KeyRing::parse(&format!("{good},4:c2hvcnQ=")).unwrap_err(),
            KeyRingError::BadKey(2)
        );
        assert_eq!(
            KeyRing::parse(&format!("{good},{good}")).unwrap_err(),
            KeyRingError::DuplicateId(3)
        );
        assert_eq!(
            KeyRing::parse("0:AAAA").unwrap_err(),
            KeyRingError::Malformed(1)
        );
    }

    #[test]
    fn debug_hides_key_material() {
        let entry = KeyRing::generate_entry(9);
        let r = ring(&[&entry]);
        let b64 = entry
            .split_once(':')
            .map(|(_, k)| k.to_string())
            .unwrap_or_default();
        assert!(!format!("{r:?}").contains(&b64));
    }

    #[test]
    fn cookie_sized_envelope_is_small() {
        let r = ring(&[&KeyRing::generate_entry(1)]);
        let id = random_token();
        assert!(r.seal_text(b"__Host-cloakroom", id.as_bytes()).len() < 200);
    }
}
