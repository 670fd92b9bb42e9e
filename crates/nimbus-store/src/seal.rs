//! Secrets sealed at rest: what the database holds of an API key's secret, an instance's generated password
//! and a stored answer of an idempotent request (which may carry a new key's secret) is ciphertext under a
//! server key, so that a copy of the database file, a dump or a backup does not hand them out.
//!
//! The cipher is ChaCha20-Poly1305 from `ring` (already the TLS stack's provider: no second crypto crate).
//! Each value is sealed with a fresh random nonce and bound to where it is stored (the associated data
//! names the row), so a sealed value copied into another row does not open.
//!
//! Keys come as a *key ring*: lines `ID BASE64KEY` (32 bytes), `#` comments allowed. The first key seals;
//! every key opens what it sealed. Rotation is adding a new first line, restarting the servers (each
//! re-seals, at start, whatever an older key sealed: [`crate::sql::SqlStore::reseal`]), then removing the
//! old lines. A sealed value reads `sealed:v1:ID:BASE64(nonce ‖ ciphertext ‖ tag)`.

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{StoreError, StoreResult};

const PREFIX: &str = "sealed:v1:";
const KEY_LEN: usize = 32;

/// The server's sealing keys (see the module's documentation).
pub struct SealKeys {
    /// `(id, key)`; the first seals.
    keys: Vec<(String, LessSafeKey)>,
    random: SystemRandom,
}

impl fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("SealKeys").field("ids", &self.ids()).finish()
    }
}

impl SealKeys {
    /// Reads a key ring's text.
    pub fn parse(text: &str) -> StoreResult<SealKeys> {
        let invalid = |line: usize, why: &str| StoreError::Backend(format!("seal key ring, line {line}: {why}"));
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, material) = line.split_once(char::is_whitespace).ok_or_else(|| invalid(n, "expected `ID KEY`"))?;
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(invalid(n, "the id must be letters, digits, '-' or '_'"));
            }
            if keys.iter().any(|(other, _)| other == id) {
                return Err(invalid(n, "the id is used twice"));
            }
            let bytes = STANDARD_NO_PAD
                .decode(material.trim().trim_end_matches('='))
                .map_err(|_| invalid(n, "the key is not base64"))?;
            if bytes.len() != KEY_LEN {
                return Err(invalid(n, "the key must be 32 bytes"));
            }
            let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| invalid(n, "unusable key"))?;
            keys.push((id.to_string(), LessSafeKey::new(key)));
        }
        if keys.is_empty() {
            return Err(StoreError::Backend("the seal key ring holds no key".into()));
        }
        Ok(SealKeys { keys, random: SystemRandom::new() })
    }

    /// A new key ring line: a fresh random key named `id`.
    pub fn new_key_line(id: &str) -> String {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut key).expect("the system's random source works");
        format!("{id} {}", STANDARD_NO_PAD.encode(key))
    }

    /// The keys' ids, the sealing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }

    /// Whether `value` is sealed with the current (first) key.
    pub fn is_current(&self, value: &str) -> bool {
        value.strip_prefix(PREFIX).and_then(|rest| rest.split_once(':')).is_some_and(|(id, _)| id == self.keys[0].0)
    }

    /// `plain` sealed with the current key, bound to `place` (the row it is stored in).
    pub fn seal(&self, place: &str, plain: &str) -> String {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).expect("the system's random source works");
        let mut data = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(place.as_bytes()), &mut data)
            .expect("a value under 4 GiB seals");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{PREFIX}{id}:{}", STANDARD_NO_PAD.encode(out))
    }

    /// What `value` holds: opened when sealed (with the key it names, bound to `place`), as it is when
    /// it is not (written before sealing, or by a store without keys).
    pub fn open(&self, place: &str, value: &str) -> StoreResult<String> {
        let Some(rest) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_string());
        };
        let corrupt = |why: &str| StoreError::Backend(format!("sealed secret of {place}: {why}"));
        let (id, data) = rest.split_once(':').ok_or_else(|| corrupt("malformed"))?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(known, _)| known == id)
            .ok_or_else(|| corrupt(&format!("sealed with key '{id}', which the key ring does not hold")))?;
        let mut data = STANDARD_NO_PAD.decode(data).map_err(|_| corrupt("malformed"))?;
        if data.len() < NONCE_LEN {
            return Err(corrupt("malformed"));
        }
        let sealed = data.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&data).map_err(|_| corrupt("malformed"))?;
        let mut sealed = sealed;
        let plain = key
            .open_in_place(nonce, Aad::from(place.as_bytes()), &mut sealed)
            .map_err(|_| corrupt("does not open (another key's, or moved from another row)"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| corrupt("not text"))
    }
}

/// Opens `value` with `keys`, or refuses a sealed value when there are none.
pub(crate) fn open_with(keys: Option<&SealKeys>, place: &str, value: &str) -> StoreResult<String> {
    match keys {
        Some(keys) => keys.open(place, value),
        None if SealKeys::is_sealed(value) => {
            Err(StoreError::Backend(format!("{place} holds a sealed secret, and this server has no seal key")))
        }
        None => Ok(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(lines: &[&str]) -> SealKeys {
        SealKeys::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_in_its_place() {
        let a = SealKeys::new_key_line("a");
        let b = SealKeys::new_key_line("b");
        let keys = ring(&[&a]);
        let sealed = keys.seal("api_key:NIM1", "s3cret");
        assert!(!sealed.contains("s3cret"));
        assert_ne!(sealed, keys.seal("api_key:NIM1", "s3cret"), "a fresh nonce each time");
        assert_eq!(keys.open("api_key:NIM1", &sealed).unwrap(), "s3cret");
        assert!(keys.open("api_key:NIM2", &sealed).is_err(), "moved to another row");
        assert!(ring(&[&b]).open("api_key:NIM1", &sealed).is_err(), "another key ring");
        // A rotated ring (new key first, old kept) still opens it, and seals with the new key.
        let rotated = ring(&[&b, &a]);
        assert_eq!(rotated.open("api_key:NIM1", &sealed).unwrap(), "s3cret");
        assert!(!rotated.is_current(&sealed));
        assert!(rotated.is_current(&rotated.seal("x", "y")));
        // A value from before sealing reads as it is.
        assert_eq!(keys.open("x", "plain").unwrap(), "plain");
        assert!(open_with(None, "x", &sealed).is_err());
    }

    #[test]
    fn malformed_key_rings_are_refused_with_the_line() {
        for bad in ["", "# only a comment", "onlyid", "a notbase64!", "a AAAA", "a b\na b"] {
            let err = SealKeys::parse(bad).unwrap_err().to_string();
            assert!(err.contains("seal key ring"), "{bad:?}: {err}");
        }
        let line = SealKeys::new_key_line("k1");
        assert!(SealKeys::parse(&format!("{line}\n{line}")).unwrap_err().to_string().contains("twice"));
    }
}
