//! Field encryption for secrets at rest (plugin configuration fields marked `writeOnly`).
//!
//! AES-256-GCM with a random 96-bit nonce per value. The envelope is
//! `version ‖ key id (8 bytes) ‖ nonce (12 bytes) ‖ ciphertext and tag`, and the caller binds
//! where the value lives (tenant, table, row) as associated data, so a ciphertext copied to
//! another tenant's row does not decrypt. The key id lets a later key rotation tell which
//! key sealed a value.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use sha2::{Digest, Sha256};

const ENVELOPE_VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;

/// Seals and opens secrets with the server's secret key.
pub struct SecretBox {
    cipher: Aes256Gcm,
    key_id: [u8; KEY_ID_LEN],
}

#[derive(Debug, thiserror::Error)]
#[error("a stored secret could not be decrypted (wrong key, or the value was moved or altered)")]
pub struct OpenError;

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        let digest = Sha256::digest(key);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self {
            cipher: Aes256Gcm::new_from_slice(key).expect("32-byte key"),
            key_id,
        }
    }

    /// The key from `STREAMFLOW_SECRET_KEY` (base64 of 32 bytes) if given, otherwise from
    /// `secret.key` in the data directory, created on first start. Every node of a cluster
    /// must use the same key: set the variable there.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        let decode = |text: &str, from: &str| -> anyhow::Result<[u8; 32]> {
            let bytes = STANDARD
                .decode(text.trim())
                .with_context(|| format!("{from} is not base64"))?;
            bytes.try_into().map_err(|_| {
                anyhow::anyhow!(
                    "{from} must be 32 bytes in base64; make one with `openssl rand -base64 32`"
                )
            })
        };
        if let Some(text) = configured {
            return Ok(Self::new(&decode(text, "STREAMFLOW_SECRET_KEY")?));
        }
        let path = data_dir.join("secret.key");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok(Self::new(&decode(&text, &path.display().to_string())?));
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        write_private(&path, STANDARD.encode(key).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(path = %path.display(), "generated the secret key; back it up with the database");
        Ok(Self::new(&key))
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer");
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + sealed.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, envelope: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        let header = 1 + KEY_ID_LEN + NONCE_LEN;
        if envelope.len() < header + 16
            || envelope[0] != ENVELOPE_VERSION
            || envelope[1..1 + KEY_ID_LEN] != self.key_id
        {
            return Err(OpenError);
        }
        let nonce: [u8; NONCE_LEN] = envelope[1 + KEY_ID_LEN..header].try_into().expect("sliced");
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &envelope[header..],
                    aad,
                },
            )
            .map_err(|_| OpenError)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// `bytes` random bytes as URL-safe base64 without padding: tokens that appear in URLs.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_its_place() {
        let sb = SecretBox::new(&[7u8; 32]);
        let sealed = sb.seal(b"api-key-123", b"tenant-a/plugin");
        assert!(!sealed.windows(11).any(|w| w == b"api-key-123"));
        assert_eq!(
            sb.open(&sealed, b"tenant-a/plugin").unwrap(),
            b"api-key-123"
        );
        assert!(
            sb.open(&sealed, b"tenant-b/plugin").is_err(),
            "moved to another row"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sb.open(&tampered, b"tenant-a/plugin").is_err());
        assert!(
            SecretBox::new(&[8u8; 32])
                .open(&sealed, b"tenant-a/plugin")
                .is_err()
        );
        assert_ne!(
            sb.seal(b"x", b""),
            sb.seal(b"x", b""),
            "fresh nonce each time"
        );
    }

    #[test]
    fn key_file_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load(None, dir.path()).unwrap();
        let b = SecretBox::load(None, dir.path()).unwrap();
        assert_eq!(b.open(&a.seal(b"s", b"x"), b"x").unwrap(), b"s");
        assert!(SecretBox::load(Some("short"), dir.path()).is_err());
    }
}
