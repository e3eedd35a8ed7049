//! The validate stage of an offering's reconcile: pure verdicts on its spec
//! and the operator's settings, checked before anything is read or written,
//! each error saying what a person has to change.

use std::collections::BTreeSet;

use kube::ResourceExt;

use crate::api::PublishedOffering;
use crate::credentials::SecretLocation;
use crate::error::Error;
use crate::names::{KUBECONFIG_KEY, Names};

/// What a valid offering gives the later stages.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The names of the offering's objects.
    pub names: Names,
    /// Where the operator's kcp kubeconfig for the offering is.
    pub kcp_secret: SecretLocation,
}

/// Checks what the schema cannot: a name the offering's Service can carry,
/// unique resource names, and a kcp kubeconfig Secret the operator reads
/// but never writes. `default_kcp_secret` is the operator's
/// `--default-kcp-secret`.
pub fn validate(
    offering: &PublishedOffering,
    default_kcp_secret: Option<&SecretLocation>,
) -> Result<Validated, Error> {
    let names = Names::of(offering).map_err(Error::InvalidSpec)?;
    let name = offering.name_any();
    if !sync_agent::api::dns::is_dns1035_label(&name) {
        return Err(Error::InvalidSpec(format!(
            "the offering's name {name:?} must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter) because its agent's metrics Service is named after it"
        )));
    }
    let mut seen = BTreeSet::new();
    for resource in &offering.spec.resources {
        if !seen.insert(resource.name.as_str()) {
            return Err(Error::InvalidSpec(format!(
                "spec.resources has two entries named {:?}; names must be unique",
                resource.name
            )));
        }
    }
    let kcp_secret = kcp_secret_location(offering, default_kcp_secret)?;
    if kcp_secret.namespace == names.namespace && kcp_secret.name == names.kcp_secret {
        return Err(Error::InvalidSpec(format!(
            "spec.kcp.kubeconfigSecretRef names {}, the Secret the operator writes the agent's kubeconfig to; keep the operator's kcp kubeconfig in a Secret of another name",
            names.kcp_secret
        )));
    }
    Ok(Validated { names, kcp_secret })
}

/// Where the offering's kcp kubeconfig is: its own reference, else
/// `default_kcp_secret`.
pub fn kcp_secret_location(
    offering: &PublishedOffering,
    default_kcp_secret: Option<&SecretLocation>,
) -> Result<SecretLocation, Error> {
    match &offering.spec.kcp.kubeconfig_secret_ref {
        Some(reference) => Ok(SecretLocation {
            namespace: offering.namespace().unwrap_or_default(),
            name: reference.name.clone(),
            key: reference.key.clone().unwrap_or_else(|| KUBECONFIG_KEY.into()),
        }),
        None => default_kcp_secret.cloned().ok_or_else(|| {
            Error::KcpSecretMissing(
                "spec.kcp.kubeconfigSecretRef is unset and the operator has no --default-kcp-secret".into(),
            )
        }),
    }
}

#[cfg(test)]
mod tests;
