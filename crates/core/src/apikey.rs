//! The API-key format (SPEC §3.1): `pc_` + 32 base62 characters of randomness + 6 base62
//! characters of CRC-32 checksum over everything before it.
//!
//! The checksum lets the gateway reject typos and garbage without touching any store, and lets
//! secret scanners recognise a leaked key with near-zero false positives. The key itself is never
//! stored: only `HMAC-SHA-256(pepper, key)`, compared in constant time.
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "pc_";
const BODY_LEN: usize = 32;
const CHECK_LEN: usize = 6;
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;
/// Characters shown to humans to recognise a key (`pc_` + 8): not enough to guess it.
pub const DISPLAY_PREFIX_LEN: usize = PREFIX.len() + 8;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFormat {
    #[error("api key must start with `pc_`")]
    Prefix,
    #[error("api key has the wrong length")]
    Length,
    #[error("api key contains characters outside base62")]
    Alphabet,
    #[error("api key checksum does not match")]
    Checksum,
}

fn base62_fixed(mut v: u64, len: usize) -> String {
    let mut out = vec![b'0'; len];
    for slot in out.iter_mut().rev() {
        // INVARIANT: `v % 62` is always a valid index into the 62-byte alphabet.
        *slot = ALPHABET.get((v % 62) as usize).copied().unwrap_or(b'0');
        v /= 62;
    }
    String::from_utf8(out).unwrap_or_default()
}

fn checksum(head: &str) -> String {
    base62_fixed(u64::from(crc32fast::hash(head.as_bytes())), CHECK_LEN)
}

/// Builds a key from caller-supplied random bytes (at least 32; 64 recommended so rejection
/// sampling keeps the characters exactly uniform).
pub fn generate(random: &[u8]) -> String {
    let mut body = String::with_capacity(BODY_LEN);
    for &b in random {
        if body.len() == BODY_LEN {
            break;
        }
        // Rejection sampling: 248 = 4 × 62, so accepted bytes map uniformly onto the alphabet.
        if b < 248 {
            body.push(char::from(ALPHABET.get(usize::from(b % 62)).copied().unwrap_or(b'0')));
        }
    }
    let mut i = 0usize;
    while body.len() < BODY_LEN {
        // Only reached with too few random bytes; still deterministic and valid.
        let b = random.get(i % random.len().max(1)).copied().unwrap_or(0);
        body.push(char::from(ALPHABET.get(usize::from(b % 62)).copied().unwrap_or(b'0')));
        i += 1;
    }
    let head = format!("{PREFIX}{body}");
    let check = checksum(&head);
    format!("{head}{check}")
}

/// Checks shape and checksum. Cheap, allocation-free apart from the checksum text; no store.
pub fn validate(key: &str) -> Result<(), KeyFormat> {
    if !key.starts_with(PREFIX) {
        return Err(KeyFormat::Prefix);
    }
    if key.len() != KEY_LEN {
        return Err(KeyFormat::Length);
    }
    if !key.bytes().skip(PREFIX.len()).all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyFormat::Alphabet);
    }
    let (head, check) = key.split_at(PREFIX.len() + BODY_LEN);
    if checksum(head).as_bytes().ct_eq(check.as_bytes()).into() { Ok(()) } else { Err(KeyFormat::Checksum) }
}

/// The part of a key shown in listings and used to limit failed attempts per key prefix.
pub fn display_prefix(key: &str) -> &str {
    key.get(..DISPLAY_PREFIX_LEN).unwrap_or(key)
}

pub type KeyHash = [u8; 32];

/// `HMAC-SHA-256(pepper, key)`: what is stored and looked up.
pub fn hash(pepper: &[u8], key: &str) -> KeyHash {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(pepper) else {
        return [0u8; 32];
    };
    mac.update(key.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Constant-time equality of two stored hashes.
pub fn hashes_equal(a: &KeyHash, b: &KeyHash) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_validate_and_single_edits_do_not() {
        let random: Vec<u8> = (0u8..=255).cycle().skip(7).take(64).collect();
        let key = generate(&random);
        assert_eq!(key.len(), KEY_LEN);
        assert_eq!(validate(&key), Ok(()));
        for i in PREFIX.len()..key.len() {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let edited = String::from_utf8(bytes).unwrap_or_default();
            assert_eq!(validate(&edited), Err(KeyFormat::Checksum), "edit at {i}");
        }
        assert_eq!(validate("pk_abc"), Err(KeyFormat::Prefix));
        assert_eq!(validate("pc_abc"), Err(KeyFormat::Length));
        let bad = format!("pc_{}", "!".repeat(BODY_LEN + CHECK_LEN));
        assert_eq!(validate(&bad), Err(KeyFormat::Alphabet));
    }

    #[test]
    fn hash_depends_on_pepper() {
        assert_ne!(hash(b"a", "pc_x"), hash(b"b", "pc_x"));
        assert!(hashes_equal(&hash(b"a", "pc_x"), &hash(b"a", "pc_x")));
    }
}
