//! Kubernetes name rules (DNS labels and subdomains).

/// A lower-case RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// A lower-case RFC 1035 label: an RFC 1123 label that starts with a letter.
pub fn is_dns1035_label(value: &str) -> bool {
    is_dns1123_label(value) && value.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A lower-case RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains_follow_kubernetes_rules() {
        assert!(is_dns1123_label("a-1") && is_dns1123_label("1a"));
        assert!(!is_dns1123_label("A") && !is_dns1123_label("-a") && !is_dns1123_label("a-"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        for good in ["agent-1", "databases", "a"] {
            assert!(is_dns1035_label(good), "{good}");
        }
        for bad in [
            "",
            "1agent",
            "db.example",
            "db-",
            "Databases",
            &"x".repeat(64),
        ] {
            assert!(!is_dns1035_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("example.corp") && !is_dns1123_subdomain("Example.corp"));
        assert!(!is_dns1123_subdomain("a..b"));
    }
}
