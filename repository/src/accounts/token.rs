//! Bearer tokens: a kind prefix (`vgk_` for API keys, `vgw_` for worker credentials), 30
//! random base62 characters and a 6-character base62 CRC32 of what precedes them (the format
//! GitHub uses for its tokens). The checksum lets a typo or a random string be refused without
//! touching the database, and lets secret scanners recognise leaked tokens. Only the SHA-256
//! of a token is stored (an unsalted hash is right for a 178-bit random secret), with its
//! first 12 and last 4 characters for display.

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};

/// An API key's prefix.
pub(crate) const API_KEY: &str = "vgk_";
/// A worker credential's prefix.
pub(crate) const WORKER: &str = "vgw_";

const PREFIX_LEN: usize = 4;
const RANDOM_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;
const TOKEN_LEN: usize = PREFIX_LEN + RANDOM_LEN + CHECKSUM_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A token's plaintext, shown once when it is issued. Its `Debug` shows only the display
/// prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// A fresh token of the kind `prefix` names.
    pub(crate) fn generate(prefix: &str) -> Self {
        let mut rng = rand::rng();
        let mut token = String::with_capacity(TOKEN_LEN);
        token.push_str(prefix);
        for _ in 0..RANDOM_LEN {
            token.push(char::from(BASE62[rng.random_range(0..BASE62.len())]));
        }
        let checksum = checksum(&token);
        token.push_str(&checksum);
        Self(token)
    }

    /// The full token, to show its owner once. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its SHA-256, as stored.
    pub(crate) fn hash(&self) -> [u8; 32] {
        hash(&self.0)
    }

    /// Its first 12 characters, shown in lists.
    pub(crate) fn display_prefix(&self) -> &str {
        &self.0[..12]
    }

    /// Its last 4 characters, shown in lists.
    pub(crate) fn last4(&self) -> &str {
        &self.0[TOKEN_LEN - 4..]
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({}…)", self.display_prefix())
    }
}

/// The kind prefix of a presented token whose shape and checksum hold; `None` otherwise.
pub(crate) fn kind_of(token: &str) -> Option<&'static str> {
    let well_formed = token.len() == TOKEN_LEN
        && token.is_char_boundary(PREFIX_LEN)
        && token[PREFIX_LEN..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
        && checksum(&token[..TOKEN_LEN - CHECKSUM_LEN]) == token[TOKEN_LEN - CHECKSUM_LEN..];
    if !well_formed {
        return None;
    }
    [API_KEY, WORKER].into_iter().find(|p| token.starts_with(p))
}

/// The SHA-256 of a presented token, as stored.
pub(crate) fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_checksummed() {
        let token = ApiToken::generate(API_KEY);
        let plain = token.expose();
        assert_eq!(plain.len(), 40);
        assert_eq!(kind_of(plain), Some(API_KEY));
        assert_eq!(kind_of(ApiToken::generate(WORKER).expose()), Some(WORKER));
        // One changed character breaks the checksum.
        let mut typo = plain.as_bytes().to_vec();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(kind_of(&String::from_utf8(typo).unwrap()), None);
        assert_eq!(kind_of("vgk_short"), None);
        assert_eq!(kind_of(&plain.replace("vgk_", "xyz_")), None);
        assert_ne!(ApiToken::generate(API_KEY), token);
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = ApiToken::generate(API_KEY);
        let shown = format!("{token:?}");
        assert!(!shown.contains(&token.expose()[12..]), "{shown}");
    }
}
