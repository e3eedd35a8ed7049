//! The validate stage of an offering's reconcile: pure verdicts, each error
//! saying what a person has to change. [`validate`] checks the spec and the
//! operator's settings before anything is read; [`ownership`] checks the
//! fetched facts before anything is written, so an offering that cannot
//! proceed leaves nothing behind (no token minted, no Secret written).

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::api::{AgentSettings, PublishedOffering};
use crate::credentials::SecretLocation;
use crate::desired::cluster::{KCP_VOLUME, POD_NAME_ENV};
use crate::error::Error;
use crate::fetch::Facts;
use crate::names::{
    KCP_MOUNT_PATH, KUBECONFIG_KEY, Names, OFFERING_NAME_LABEL, OFFERING_NAMESPACE_LABEL,
    OWNER_ANNOTATION,
};

/// What a valid offering gives the later stages.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The names of the offering's objects.
    pub names: Names,
    /// Where the operator's kcp kubeconfig for the offering is.
    pub kcp_secret: SecretLocation,
    /// Where the agent's own kcp kubeconfig is, when the provider brings one.
    pub agent_secret: Option<SecretLocation>,
}

/// Checks what the schema cannot: a name the offering's Service can carry,
/// unique resource names, and a kcp kubeconfig Secret the operator reads
/// but never writes. `default_kcp_secret` is the operator's
/// `--default-kcp-secret`.
///
/// The CRD refuses two resources of one name (`resources` is a list keyed
/// by `name`), but an older installed CRD does not (`helm upgrade` leaves
/// CRDs as they are), nor was an offering stored before checked: so the
/// operator checks too.
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
    if let Some(agent) = &offering.spec.agent {
        agent_extras(agent)?;
    }
    let kcp_secret = kcp_secret_location(offering, default_kcp_secret)?;
    if kcp_secret.namespace == names.namespace && kcp_secret.name == names.kcp_secret {
        return Err(Error::InvalidSpec(format!(
            "spec.kcp.kubeconfigSecretRef names {}, the Secret the operator writes the agent's kubeconfig to; keep the operator's kcp kubeconfig in a Secret of another name",
            names.kcp_secret
        )));
    }
    let agent_secret = agent_secret_location(offering);
    if let Some(agent_secret) = &agent_secret
        && agent_secret.name == names.kcp_secret
    {
        return Err(Error::InvalidSpec(format!(
            "spec.agent.kcpKubeconfigSecretRef names {}, the Secret the operator writes the agent's kubeconfig to; keep the agent's own kcp kubeconfig in a Secret of another name",
            names.kcp_secret
        )));
    }
    Ok(Validated {
        names,
        kcp_secret,
        agent_secret,
    })
}

/// The extra env, volumes and mounts of the agent leave the operator's own
/// alone, and every mount names a volume.
fn agent_extras(agent: &AgentSettings) -> Result<(), Error> {
    if let Some(env) = agent.env.iter().find(|e| e.name == POD_NAME_ENV) {
        return Err(Error::InvalidSpec(format!(
            "spec.agent.env sets {}, which the operator sets to the pod's name (the agent's leader election identity); remove it",
            env.name
        )));
    }
    if agent.volumes.iter().any(|v| v.name == KCP_VOLUME) {
        return Err(Error::InvalidSpec(format!(
            "spec.agent.volumes has a volume named {KCP_VOLUME}, the operator's volume of the agent's kcp kubeconfig; give it another name"
        )));
    }
    let volumes: BTreeSet<&str> = agent.volumes.iter().map(|v| v.name.as_str()).collect();
    for mount in &agent.volume_mounts {
        if !volumes.contains(mount.name.as_str()) {
            return Err(Error::InvalidSpec(format!(
                "spec.agent.volumeMounts mounts {:?}, which is not in spec.agent.volumes; add the volume or remove the mount",
                mount.name
            )));
        }
        if mount.mount_path.trim_end_matches('/') == KCP_MOUNT_PATH {
            return Err(Error::InvalidSpec(format!(
                "spec.agent.volumeMounts mounts {:?} at {KCP_MOUNT_PATH}, where the operator mounts the agent's kcp kubeconfig; mount it elsewhere",
                mount.name
            )));
        }
    }
    Ok(())
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

/// Where the agent's own kcp kubeconfig is (`spec.agent.kcpKubeconfigSecretRef`).
pub fn agent_secret_location(offering: &PublishedOffering) -> Option<SecretLocation> {
    let reference = offering
        .spec
        .agent
        .as_ref()?
        .kcp_kubeconfig_secret_ref
        .as_ref()?;
    Some(SecretLocation {
        namespace: offering.namespace().unwrap_or_default(),
        name: reference.name.clone(),
        key: reference
            .key
            .clone()
            .unwrap_or_else(|| KUBECONFIG_KEY.into()),
    })
}

/// Refuses an offering whose agent name, export or any service-cluster
/// object it would write belongs to someone else; `workspace` is the
/// provider workspace's path.
pub fn ownership(facts: &Facts, names: &Names, workspace: &str) -> Result<(), Error> {
    agent_name_is_ours(facts, names)?;
    export_is_ours(facts, names, workspace)?;
    let secret = facts
        .agent_secret
        .as_ref()
        .map(|secret| ("Secret", &secret.metadata));
    let objects = facts
        .service_objects
        .iter()
        .map(|found| (found.kind.as_str(), &found.metadata));
    for (kind, metadata) in objects.chain(secret) {
        if !names.labels_name_this(metadata.labels.as_ref().unwrap_or(&BTreeMap::new())) {
            return Err(Error::ObjectConflict(format!(
                "{kind} {} exists and is not this offering's (it lacks the labels {}); delete or rename it, or give the offering another name",
                metadata.name.as_deref().unwrap_or_default(),
                names.children_selector()
            )));
        }
    }
    Ok(())
}

/// Refuses an agent name that another offering's agent already goes by:
/// each agent selects PublishedResources by that name and labels its copies
/// with it, so two agents of one name would sync each other's kinds.
fn agent_name_is_ours(facts: &Facts, names: &Names) -> Result<(), Error> {
    let ours = (names.namespace.as_str(), names.offering.as_str());
    let other = facts.agent_name_holders.iter().find_map(|holder| {
        let labels = holder.labels.as_ref()?;
        let owner = (
            labels.get(OFFERING_NAMESPACE_LABEL)?.as_str(),
            labels.get(OFFERING_NAME_LABEL)?.as_str(),
        );
        (owner != ours).then(|| format!("{}/{}", owner.0, owner.1))
    });
    match other {
        Some(owner) => Err(Error::AgentNameConflict(format!(
            "the agent name {:?} is taken by the agent of offering {owner}; set spec.agent.name to a name of its own",
            names.agent
        ))),
        None => Ok(()),
    }
}

/// Refuses an export that exists without this offering's owner annotation.
fn export_is_ours(facts: &Facts, names: &Names, workspace: &str) -> Result<(), Error> {
    let Some(export) = facts.export.as_ref().filter(|e| !names.owns(e)) else {
        return Ok(());
    };
    let held_by = export
        .annotations
        .as_ref()
        .and_then(|a| a.get(OWNER_ANNOTATION))
        .map_or(
            "nobody (it was created outside the operator)".to_string(),
            |o| format!("offering {o}"),
        );
    Err(Error::ExportConflict(format!(
        "APIExport {} in {workspace} already exists and belongs to {held_by}; choose another spec.export.name, or annotate the export with {OWNER_ANNOTATION}={} to adopt it",
        names.export, names.owner
    )))
}

#[cfg(test)]
mod tests;
