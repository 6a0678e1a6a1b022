//! Digests from the network are untrusted strings that become file names: parse them first.

use sha2::{Digest as _, Sha256};
use std::fmt;

use crate::error::{Result, RuntimeError};

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| RuntimeError::InvalidDigest(s.to_string()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(RuntimeError::InvalidDigest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn of(data: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(data))))
    }

    pub fn from_hasher(h: Sha256) -> Self {
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// The hex part, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256_hex() {
        let good = Digest::of(b"x");
        assert_eq!(Digest::parse(good.as_str()).unwrap(), good);
        for bad in [
            "sha256:../../etc/passwd",
            "sha512:00",
            "sha256:ABCDEF",
            &format!("sha256:{}", "A".repeat(64)),
            "",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
