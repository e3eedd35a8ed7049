//! The hash that names and labels of this API carry (as upstream's agent).

use sha1::{Digest, Sha1};

/// Hex SHA-1 of a string.
pub fn sha1_hex(value: &str) -> String {
    Sha1::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_full_sha1_hex_as_upstream() {
        // SHA-1("abc") is a published test vector.
        assert_eq!(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
