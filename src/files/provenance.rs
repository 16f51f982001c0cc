//! Where values came from: content hashes of photos and files, and the source records that features and
//! identities carry.
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One source photo (or precomputed feature row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Hex SHA-256 of the photo's bytes (or of the feature row).
    pub hash: String,
    pub label: String,
}

/// Bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a byte string, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The first 12 characters of a hash (or any text), cut on a character boundary: hashes read from files may be
/// anything, and slicing bytes would panic inside a multi-byte character.
pub fn short(hash: &str) -> &str {
    match hash.char_indices().nth(12) {
        Some((i, _)) => &hash[..i],
        None => hash,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_never_splits_a_character() {
        assert_eq!(super::short("0123456789abcdef"), "0123456789ab");
        assert_eq!(super::short("ééééééééééééééé"), "éééééééééééé");
        assert_eq!(super::short("abc"), "abc");
    }
}
