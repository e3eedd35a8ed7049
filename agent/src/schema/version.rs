//! Kubernetes version names and their priority order.

use std::cmp::Ordering;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion;

/// A parsed Kubernetes-style version: `v<major>[(alpha|beta)<minor>]`.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Kube { major: u64, stage: u8, minor: u64 },
    Other,
}

fn parse(name: &str) -> Parsed {
    let Some(rest) = name.strip_prefix('v') else {
        return Parsed::Other;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let Ok(major) = rest[..digits].parse::<u64>() else {
        return Parsed::Other;
    };
    if major == 0 || rest[..digits].starts_with('0') {
        return Parsed::Other;
    }
    let tail = &rest[digits..];
    let (stage, minor) = if tail.is_empty() {
        (2, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (1, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (0, n.parse().unwrap_or(0))
    } else {
        return Parsed::Other;
    };
    if !tail.is_empty() && (minor == 0 || tail.ends_with(|c: char| !c.is_ascii_digit())) {
        return Parsed::Other;
    }
    Parsed::Kube {
        major,
        stage,
        minor,
    }
}

/// Whether `name` is a valid version name for a schema (`v1`, `v2beta1`, ...).
pub fn is_valid(name: &str) -> bool {
    matches!(parse(name), Parsed::Kube { .. })
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers
/// first; anything else after them, alphabetically.
fn priority(a: &str, b: &str) -> Ordering {
    match (parse(a), parse(b)) {
        (
            Parsed::Kube {
                major: ma,
                stage: sa,
                minor: na,
            },
            Parsed::Kube {
                major: mb,
                stage: sb,
                minor: nb,
            },
        ) => sb.cmp(&sa).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Parsed::Kube { .. }, Parsed::Other) => Ordering::Less,
        (Parsed::Other, Parsed::Kube { .. }) => Ordering::Greater,
        (Parsed::Other, Parsed::Other) => a.cmp(b),
    }
}

/// Sorts versions by Kubernetes' version priority.
pub fn sort_versions(versions: &mut [CustomResourceDefinitionVersion]) {
    versions.sort_by(|a, b| priority(&a.name, &b.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_kubernetes_priority() {
        let mut names = vec![
            "v1alpha1",
            "v2",
            "foo",
            "v1",
            "v1beta2",
            "v11alpha2",
            "v1beta1",
            "bar",
        ];
        names.sort_by(|a, b| priority(a, b));
        assert_eq!(
            names,
            [
                "v2",
                "v1",
                "v1beta2",
                "v1beta1",
                "v11alpha2",
                "v1alpha1",
                "bar",
                "foo"
            ]
        );
    }

    #[test]
    fn only_kubernetes_version_names_are_valid() {
        for valid in ["v1", "v10", "v1beta1", "v2alpha3"] {
            assert!(is_valid(valid), "{valid}");
        }
        for invalid in ["1", "v0", "v01", "v1beta", "v1gamma1", "v1beta0", "V1", ""] {
            assert!(!is_valid(invalid), "{invalid}");
        }
    }
}
