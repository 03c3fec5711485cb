//! Values sealed at rest with the master key: XChaCha20-Poly1305, a random 24-byte nonce per
//! value, and associated data that binds the ciphertext to where it belongs (tenant, route,
//! header), so a row copied to another tenant or route does not decrypt.
//!
//! This is the seam for the fuller secret store (envelope encryption, versions, rotation): callers
//! only see `seal`/`open` with a context.
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub struct MasterKey(zeroize::Zeroizing<[u8; 32]>);

impl MasterKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(zeroize::Zeroizing::new(bytes))
    }

    /// Returns `hex(nonce)`, `hex(ciphertext)`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<(String, String), String> {
        let cipher = XChaCha20Poly1305::new((&*self.0).into());
        let nonce = crate::random_bytes::<24>()?;
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            .map_err(|_| String::from("encryption failed"))?;
        Ok((hex::encode(nonce), hex::encode(ct)))
    }

    pub fn open(&self, context: &str, nonce_hex: &str, ct_hex: &str) -> Result<Vec<u8>, String> {
        let nonce = hex::decode(nonce_hex).map_err(|_| String::from("corrupt nonce"))?;
        if nonce.len() != 24 {
            return Err(String::from("corrupt nonce"));
        }
        let ct = hex::decode(ct_hex).map_err(|_| String::from("corrupt ciphertext"))?;
        let cipher = XChaCha20Poly1305::new((&*self.0).into());
        cipher
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ct, aad: context.as_bytes() })
            .map_err(|_| String::from("ciphertext does not open with this master key and context"))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

pub fn credential_context(tenant: &str, route: &str, header: &str) -> String {
    format!("portcullis/upstream-credential/v1\n{tenant}\n{route}\n{header}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_with_the_same_key_and_context() {
        let k = MasterKey::new([3u8; 32]);
        let ctx = credential_context("t1", "/up", "authorization");
        let (n, c) = k.seal(&ctx, b"Bearer sk-secret").unwrap_or_default();
        assert_eq!(k.open(&ctx, &n, &c).ok().as_deref(), Some(&b"Bearer sk-secret"[..]));
        assert!(k.open(&credential_context("t2", "/up", "authorization"), &n, &c).is_err());
        assert!(MasterKey::new([4u8; 32]).open(&ctx, &n, &c).is_err());
        assert!(!c.contains(&hex::encode(b"sk-secret")));
    }
}
