//! The objects an offering needs on the service cluster: the agent's
//! identity and permissions, its PublishedResources, its Deployment and the
//! metrics Service.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::api::ObjectMeta;
use sync_agent::api::hash::sha1_hex;
use sync_agent::api::published_resource::PublishedResource;

use crate::api::{AgentSettings, LogFormat, PublishedOffering};
use crate::error::Error;
use crate::names::{AGENT_LABEL, KCP_MOUNT_PATH, KUBECONFIG_KEY, Names, OWNER_ANNOTATION};

/// Port of the agent's `/metrics`.
pub const METRICS_PORT: i32 = 8085;
/// Port of the agent's `/healthz` and `/readyz`.
pub const HEALTH_PORT: i32 = 8086;
/// Path of the agent binary in the project's image.
pub const AGENT_COMMAND: &str = "/usr/local/bin/sync-agent";
/// User and group the agent runs as (non-root).
const AGENT_UID: i64 = 65532;
/// Agent replicas when the offering does not say: one leads, one stands by.
const DEFAULT_REPLICAS: i32 = 2;
/// The pod volume of the agent's kcp kubeconfig Secret.
pub const KCP_VOLUME: &str = "kcp-kubeconfig";
/// The variable that gives the agent its pod's name.
pub const POD_NAME_ENV: &str = "POD_NAME";

/// A kind the agent syncs on the service cluster, as RBAC names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
pub struct GroupResource {
    /// API group, empty for core.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

/// Namespaced children: named by the workload, owned by the offering.
fn owned(offering: &PublishedOffering, names: &Names, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: offering.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..Default::default()
    }
}

/// Cluster-scoped children: found again by label, removed by the finalizer.
fn cluster_meta(names: &Names, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(names.labels()),
        annotations: Some(BTreeMap::from([(
            OWNER_ANNOTATION.into(),
            names.owner.clone(),
        )])),
        ..Default::default()
    }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

const WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// The agent's ServiceAccount.
pub fn service_account(offering: &PublishedOffering, names: &Names) -> ServiceAccount {
    ServiceAccount {
        metadata: owned(offering, names, &names.agent_workload),
        ..Default::default()
    }
}

/// Whether a PublishedResource of the offering deletes the namespaces its
/// agent created once they are empty (`naming.deleteEmptyNamespaces`).
pub fn clears_namespaces(offering: &PublishedOffering) -> bool {
    offering.spec.resources.iter().any(|resource| {
        resource
            .spec
            .naming
            .as_ref()
            .and_then(|naming| naming.delete_empty_namespaces)
            == Some(true)
    })
}

/// What the agent does cluster-wide: read CRDs and its PublishedResources,
/// write their status, create namespaces for copies, raise events, and
/// manage copies of the published kinds (`synced`) and related objects
/// (`related`). Only when it deletes empty namespaces (`clears_namespaces`)
/// may it delete namespaces and list every kind, to tell that a namespace
/// is empty (it asks for object metadata only).
pub fn cluster_role(
    names: &Names,
    synced: &BTreeSet<GroupResource>,
    related: &BTreeSet<GroupResource>,
    clears_namespaces: bool,
) -> ClusterRole {
    let namespace_verbs: &[&str] = if clears_namespaces {
        &["get", "list", "watch", "create", "patch", "delete"]
    } else {
        &["get", "list", "watch", "create", "patch"]
    };
    let mut rules = vec![
        rule(
            "apiextensions.k8s.io",
            &["customresourcedefinitions"],
            &["get", "list", "watch"],
        ),
        rule(
            "syncagent.kcp.io",
            &["publishedresources"],
            &["get", "list", "watch"],
        ),
        rule(
            "syncagent.kcp.io",
            &["publishedresources/status"],
            &["get", "update", "patch"],
        ),
        rule("", &["namespaces"], namespace_verbs),
        rule("", &["events"], &["create", "patch"]),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ];
    if clears_namespaces {
        rules.push(rule("*", &["*"], &["list"]));
    }
    for kind in synced {
        rules.push(rule(&kind.group, &[kind.resource.as_str()], WRITE));
        rules.push(rule(
            &kind.group,
            &[format!("{}/status", kind.resource).as_str()],
            &["get", "update", "patch"],
        ));
    }
    for kind in related.difference(synced) {
        rules.push(rule(&kind.group, &[kind.resource.as_str()], WRITE));
    }
    ClusterRole {
        metadata: cluster_meta(names, &names.cluster_role),
        rules: Some(rules),
        ..Default::default()
    }
}

fn agent_subject(names: &Names) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: names.agent_workload.clone(),
        namespace: Some(names.namespace.clone()),
        ..Default::default()
    }
}

/// Binds [`cluster_role`] to the agent.
pub fn cluster_role_binding(names: &Names) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: cluster_meta(names, &names.cluster_role),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: names.cluster_role.clone(),
        },
        subjects: Some(vec![agent_subject(names)]),
    }
}

/// The leader-election Lease in the offering's namespace.
pub fn role(offering: &PublishedOffering, names: &Names) -> Role {
    Role {
        metadata: owned(offering, names, &names.agent_workload),
        rules: Some(vec![rule(
            "coordination.k8s.io",
            &["leases"],
            // What the leader election reads and writes: one Lease, by name.
            &["get", "create", "update"],
        )]),
    }
}

/// Binds [`role`] to the agent.
pub fn role_binding(offering: &PublishedOffering, names: &Names) -> RoleBinding {
    RoleBinding {
        metadata: owned(offering, names, &names.agent_workload),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: names.agent_workload.clone(),
        },
        subjects: Some(vec![agent_subject(names)]),
    }
}

/// One PublishedResource per offered resource, labelled for the agent.
pub fn published_resources(offering: &PublishedOffering, names: &Names) -> Vec<PublishedResource> {
    offering
        .spec
        .resources
        .iter()
        .map(|resource| {
            let mut published = PublishedResource::new(
                &names.published_resource(&resource.name),
                resource.spec.clone(),
            );
            let mut meta = cluster_meta(names, &names.published_resource(&resource.name));
            meta.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(AGENT_LABEL.into(), names.agent.clone());
            published.metadata = meta;
            published
        })
        .collect()
}

/// The agent's `--published-resource-selector`.
pub fn published_resource_selector(names: &Names) -> String {
    format!("{AGENT_LABEL}={}", names.agent)
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("health".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// The agent's flags.
fn agent_args(names: &Names, settings: &AgentSettings) -> Vec<String> {
    let format = match settings.log_format.unwrap_or_default() {
        LogFormat::Json => "json",
        LogFormat::Text => "text",
    };
    let mut args = vec![
        format!("--namespace={}", names.namespace),
        format!("--agent-name={}", names.agent),
        format!("--apiexportendpointslice-ref={}", names.export),
        format!("--kcp-kubeconfig={KCP_MOUNT_PATH}/{KUBECONFIG_KEY}"),
        format!(
            "--published-resource-selector={}",
            published_resource_selector(names)
        ),
        "--enable-leader-election".into(),
        format!("--metrics-address=0.0.0.0:{METRICS_PORT}"),
        format!("--health-address=0.0.0.0:{HEALTH_PORT}"),
        format!("--log-format={format}"),
    ];
    if let Some(level) = settings.log_level {
        args.push(format!("--log-level={}", level.as_str()));
    }
    if settings.wait_for_foreign_finalizers {
        args.push("--wait-for-foreign-finalizers".into());
    }
    if settings.per_agent_related_finalizer {
        args.push("--per-agent-related-finalizer".into());
    }
    for rewrite in &settings.endpoint_rewrites {
        args.push(format!(
            "--endpoint-url-rewrite={}={}",
            rewrite.from, rewrite.to
        ));
    }
    if let Some(file) = &settings.endpoint_rewrite_ca_file {
        args.push(format!("--endpoint-url-rewrite-ca-file={file}"));
    }
    if let Some(namespace) = &settings.upstream_state_namespace {
        args.push(format!("--upstream-state-namespace={namespace}"));
    }
    if !settings.disabled_controllers.is_empty() {
        let names: Vec<&str> = settings
            .disabled_controllers
            .iter()
            .map(|c| c.as_str())
            .collect();
        args.push(format!("--disabled-controllers={}", names.join(",")));
    }
    args
}

/// Pod annotation: SHA-1 of the agent's kcp kubeconfig (without the token,
/// which the agent rereads from its file), so that a new kcp address or CA
/// rolls the agent's pods.
pub const KUBECONFIG_HASH_ANNOTATION: &str = "offering.syncagent.dev/kcp-kubeconfig-sha1";

/// The agent pods' securityContext unless the offering changes it.
fn default_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The agent container's securityContext unless the offering changes it:
/// what the restricted Pod Security Standard admits, as a fixed non-root
/// user.
fn default_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(AGENT_UID),
        run_as_group: Some(AGENT_UID),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The agent's Deployment; `kubeconfig` is the agent's kcp kubeconfig. An
/// error when the offering's security context changes do not make one.
pub fn deployment(
    offering: &PublishedOffering,
    names: &Names,
    image: &str,
    kubeconfig: &str,
) -> Result<Deployment, Error> {
    let settings = offering.spec.agent.clone().unwrap_or_default();
    let pod_security_context = settings
        .pod_security_context
        .over(&default_pod_security_context())
        .map_err(|e| Error::InvalidSpec(format!("spec.agent.podSecurityContext: {e}")))?;
    let security_context = settings
        .security_context
        .over(&default_security_context())
        .map_err(|e| Error::InvalidSpec(format!("spec.agent.securityContext: {e}")))?;
    let mut pod_annotations = settings.pod_annotations.clone();
    pod_annotations.insert(KUBECONFIG_HASH_ANNOTATION.into(), sha1_hex(kubeconfig));
    let mut pod_labels = settings.pod_labels.clone();
    pod_labels.extend(names.labels());
    let mut env = vec![EnvVar {
        name: POD_NAME_ENV.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    env.extend(settings.env.iter().cloned());
    let mut volume_mounts = vec![VolumeMount {
        name: KCP_VOLUME.into(),
        mount_path: KCP_MOUNT_PATH.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    volume_mounts.extend(settings.volume_mounts.iter().cloned());
    let mut volumes = vec![Volume {
        name: KCP_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names.kcp_secret.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }];
    volumes.extend(settings.volumes.iter().cloned());
    let container = Container {
        name: "sync-agent".into(),
        image: Some(image.into()),
        command: Some(vec![AGENT_COMMAND.into()]),
        args: Some(agent_args(names, &settings)),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("health".into()),
                container_port: HEALTH_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: settings.resources.clone(),
        security_context: Some(security_context),
        volume_mounts: Some(volume_mounts),
        ..Default::default()
    };
    Ok(Deployment {
        metadata: owned(offering, names, &names.agent_workload),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas(&settings)),
            strategy: settings.strategy.clone(),
            revision_history_limit: settings.revision_history_limit,
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names.agent_workload.clone()),
                    image_pull_secrets: (!settings.image_pull_secrets.is_empty())
                        .then(|| settings.image_pull_secrets.clone()),
                    security_context: Some(pod_security_context),
                    init_containers: (!settings.init_containers.is_empty())
                        .then(|| settings.init_containers.clone()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: (!settings.node_selector.is_empty())
                        .then(|| settings.node_selector.clone()),
                    tolerations: (!settings.tolerations.is_empty())
                        .then(|| settings.tolerations.clone()),
                    affinity: settings.affinity.clone(),
                    priority_class_name: settings.priority_class_name.clone(),
                    topology_spread_constraints: (!settings.topology_spread_constraints.is_empty())
                        .then(|| settings.topology_spread_constraints.clone()),
                    host_aliases: (!settings.host_aliases.is_empty())
                        .then(|| settings.host_aliases.clone()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn replicas(settings: &AgentSettings) -> i32 {
    settings.replicas.unwrap_or(DEFAULT_REPLICAS)
}

/// The agent pods' PodDisruptionBudget: while there is more than one
/// replica, unless the offering switches it off. A drain then takes one
/// pod at a time (by default), and the standby takes over the lead.
pub fn disruption_budget(
    offering: &PublishedOffering,
    names: &Names,
) -> Option<PodDisruptionBudget> {
    let settings = offering.spec.agent.clone().unwrap_or_default();
    let budget = settings.pod_disruption_budget.clone().unwrap_or_default();
    if replicas(&settings) < 2 || budget.enabled == Some(false) {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: owned(offering, names, &names.agent_workload),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(budget.max_unavailable.unwrap_or(IntOrString::Int(1))),
            selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Service a Prometheus scrapes the agent through.
pub fn metrics_service(offering: &PublishedOffering, names: &Names) -> Service {
    Service {
        metadata: owned(offering, names, &names.metrics_service),
        spec: Some(ServiceSpec {
            selector: Some(names.selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: METRICS_PORT,
                target_port: Some(IntOrString::String("metrics".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PublishedOfferingSpec;
    use serde_json::json;

    fn offering(agent: serde_json::Value) -> (PublishedOffering, Names) {
        let spec: PublishedOfferingSpec = serde_json::from_value(json!({
            "kcp": {"workspace": "root:providers:db"},
            "resources": [
                {"name": "dbs", "resource": {"apiGroup": "db.example.io", "kind": "Database"}},
                {"name": "backups", "resource": {"apiGroup": "db.example.io", "kind": "Backup"}}
            ],
            "agent": agent,
        }))
        .unwrap();
        let mut offering = PublishedOffering::new("databases", spec);
        offering.metadata.namespace = Some("team-a".into());
        offering.metadata.uid = Some("0000-1111".into());
        let names = Names::of(&offering).unwrap();
        (offering, names)
    }

    #[test]
    fn the_deployment_runs_non_root_with_the_spec_scheduling() {
        let (offering, names) = offering(json!({
            "replicas": 3,
            "nodeSelector": {"pool": "agents"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "podLabels": {"team": "a"},
            "logFormat": "text",
            "logLevel": "trace",
            "imagePullSecrets": [{"name": "registry"}],
        }));
        let deployment =
            deployment(&offering, &names, "example/sync-agent:1", "kubeconfig").unwrap();
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "agents");
        assert_eq!(pod.tolerations.unwrap().len(), 1);
        assert_eq!(spec.template.metadata.unwrap().labels.unwrap()["team"], "a");
        assert_eq!(pod.image_pull_secrets.clone().unwrap()[0].name, "registry");
        let container = &pod.containers[0];
        let security = container.security_context.clone().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.unwrap().drop.unwrap(),
            vec!["ALL".to_string()]
        );
        let args = container.args.clone().unwrap();
        assert!(args.contains(&"--log-format=text".to_string()), "{args:?}");
        assert!(args.contains(&"--log-level=trace".to_string()), "{args:?}");
        assert!(args.contains(&"--apiexportendpointslice-ref=databases".to_string()));
        assert!(
            args.contains(
                &"--published-resource-selector=offering.syncagent.dev/agent=team-a-databases"
                    .to_string()
            )
        );
        assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
        assert_eq!(
            deployment.metadata.owner_references.unwrap()[0].uid,
            "0000-1111"
        );
    }

    #[test]
    fn the_agent_options_of_the_spec_reach_its_flags_env_and_volumes() {
        let (with_options, names) = offering(json!({
            "waitForForeignFinalizers": true,
            "perAgentRelatedFinalizer": true,
            "disabledControllers": ["apiresourceschema", "apiexport"],
            "upstreamStateNamespace": "kcp-syncagent",
            "endpointRewrites": [{"from": "https://shard-1.kcp.svc:6443", "to": "https://kcp-1.example.com"}],
            "endpointRewriteCaFile": "/etc/extra-ca/ca.crt",
            "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
            "volumes": [{"name": "ca", "configMap": {"name": "ca"}}],
            "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/extra"}],
        }));
        let pod = deployment(&with_options, &names, "img", "kubeconfig")
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let container = &pod.containers[0];
        let args = container.args.clone().unwrap();
        for flag in [
            "--wait-for-foreign-finalizers",
            "--per-agent-related-finalizer",
            "--disabled-controllers=apiresourceschema,apiexport",
            "--upstream-state-namespace=kcp-syncagent",
            "--endpoint-url-rewrite=https://shard-1.kcp.svc:6443=https://kcp-1.example.com",
            "--endpoint-url-rewrite-ca-file=/etc/extra-ca/ca.crt",
        ] {
            assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
        }
        let env: Vec<&str> = container
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(env, [POD_NAME_ENV, "HTTPS_PROXY"]);
        let mounts: Vec<&str> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, [KCP_MOUNT_PATH, "/etc/ssl/extra"]);
        let volumes: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, [KCP_VOLUME, "ca"]);

        let (plain, names) = offering(json!(null));
        let args = deployment(&plain, &names, "img", "kubeconfig")
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap();
        assert!(
            !args.iter().any(|a| a.starts_with("--wait-for-foreign")
                || a.starts_with("--per-agent")
                || a.starts_with("--disabled-controllers")
                || a.starts_with("--upstream-state")
                || a.starts_with("--endpoint-url-rewrite")),
            "{args:?}"
        );
    }

    /// The pod template of the offering's agent Deployment.
    fn pod_spec(agent: serde_json::Value) -> PodSpec {
        let (offering, names) = offering(agent);
        deployment(&offering, &names, "img", "kubeconfig")
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    #[test]
    fn without_changes_the_security_contexts_are_restricted() {
        let pod = pod_spec(json!(null));
        assert_eq!(
            serde_json::to_value(&pod.security_context).unwrap(),
            json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert_eq!(
            serde_json::to_value(&pod.containers[0].security_context).unwrap(),
            json!({
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            })
        );
    }

    #[test]
    fn security_context_changes_merge_over_the_default_and_null_removes_a_key() {
        let pod = pod_spec(json!({
            "podSecurityContext": {
                "fsGroup": 2000,
                "seccompProfile": {"type": "Localhost", "localhostProfile": "agent.json"},
            },
            "securityContext": {
                "runAsUser": null,
                "runAsGroup": null,
                "capabilities": {"add": ["NET_BIND_SERVICE"]},
            },
        }));
        assert_eq!(
            serde_json::to_value(&pod.security_context).unwrap(),
            json!({
                "fsGroup": 2000,
                "runAsNonRoot": true,
                "seccompProfile": {"type": "Localhost", "localhostProfile": "agent.json"},
            })
        );
        assert_eq!(
            serde_json::to_value(&pod.containers[0].security_context).unwrap(),
            json!({
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "runAsNonRoot": true,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            })
        );
    }

    #[test]
    fn a_security_context_change_of_the_wrong_type_is_an_invalid_spec() {
        let (offering, names) = offering(json!({"securityContext": {"runAsUser": "root"}}));
        let error = deployment(&offering, &names, "img", "kubeconfig").unwrap_err();
        assert_eq!(error.reason(), "InvalidSpec");
        assert!(
            error.to_string().contains("spec.agent.securityContext"),
            "{error}"
        );
    }

    #[test]
    fn the_pod_placement_and_rollout_fields_of_the_spec_reach_the_deployment() {
        let (offering, names) = offering(json!({
            "priorityClassName": "platform-critical",
            "topologySpreadConstraints": [{
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"offering.syncagent.dev/name": "databases"}},
            }],
            "hostAliases": [{"ip": "10.0.0.7", "hostnames": ["kcp.internal", "shard-1.kcp.internal"]}],
            "initContainers": [{"name": "wait", "image": "busybox", "command": ["true"]}],
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
        }));
        let spec = deployment(&offering, &names, "img", "kubeconfig")
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        assert_eq!(spec.revision_history_limit, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("platform-critical")
        );
        let spread = pod.topology_spread_constraints.unwrap();
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
        let aliases = pod.host_aliases.unwrap();
        assert_eq!(aliases[0].ip, "10.0.0.7");
        assert_eq!(
            aliases[0].hostnames.as_deref(),
            Some(
                &[
                    "kcp.internal".to_string(),
                    "shard-1.kcp.internal".to_string()
                ][..]
            )
        );
        let init: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(init, ["wait"]);
        assert_eq!(pod.containers.len(), 1, "the agent alone runs beside them");

        let plain = pod_spec(json!(null));
        assert!(plain.priority_class_name.is_none());
        assert!(plain.topology_spread_constraints.is_none());
        assert!(plain.host_aliases.is_none());
        assert!(plain.init_containers.is_none());
    }

    #[test]
    fn replicas_default_to_a_leader_and_a_standby() {
        let (offering, names) = offering(json!(null));
        let deployment = deployment(&offering, &names, "img", "kubeconfig").unwrap();
        assert_eq!(deployment.spec.unwrap().replicas, Some(2));
    }

    #[test]
    fn a_new_kcp_kubeconfig_changes_the_pod_template() {
        let (offering, names) = offering(json!({"podAnnotations": {"team": "a"}}));
        let annotations = |kubeconfig: &str| {
            deployment(&offering, &names, "img", kubeconfig)
                .unwrap()
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()
        };
        let before = annotations("server: https://kcp-a");
        assert_eq!(before["team"], "a");
        assert_eq!(before, annotations("server: https://kcp-a"));
        assert_ne!(
            before[KUBECONFIG_HASH_ANNOTATION],
            annotations("server: https://kcp-b")[KUBECONFIG_HASH_ANNOTATION]
        );
    }

    #[test]
    fn the_cluster_role_covers_synced_and_related_kinds_only() {
        let (_, names) = offering(json!(null));
        let synced = BTreeSet::from([GroupResource {
            group: "db.example.io".into(),
            resource: "databases".into(),
        }]);
        let related = BTreeSet::from([GroupResource {
            group: String::new(),
            resource: "secrets".into(),
        }]);
        let role = cluster_role(&names, &synced, &related, false);
        let rules = role.rules.unwrap();
        let covers =
            |group: &str, resource: &str, verb: &str| covers(&rules, group, resource, verb);
        assert!(covers("db.example.io", "databases", "delete"));
        assert!(covers("db.example.io", "databases/status", "update"));
        assert!(covers("", "secrets", "create"));
        assert!(!covers("", "configmaps", "get"));
        assert!(!covers("", "secrets/status", "update"));
        assert!(!rules.iter().any(|r| r.verbs.contains(&"*".to_string())));
    }

    fn covers(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
        rules.iter().any(|r| {
            r.api_groups.as_deref() == Some(&[group.to_string()][..])
                && r.resources
                    .as_ref()
                    .is_some_and(|rs| rs.contains(&resource.to_string()))
                && r.verbs.contains(&verb.to_string())
        })
    }

    #[test]
    fn only_an_offering_that_deletes_empty_namespaces_may_delete_them_and_list_every_kind() {
        let (mut offering, names) = offering(json!(null));
        let rules = |offering: &PublishedOffering| {
            let none = BTreeSet::new();
            cluster_role(&names, &none, &none, clears_namespaces(offering))
                .rules
                .unwrap()
        };
        let plain = rules(&offering);
        assert!(covers(&plain, "", "namespaces", "create"));
        assert!(!covers(&plain, "", "namespaces", "delete"));
        assert!(!covers(&plain, "*", "*", "list"));

        offering.spec.resources[1].spec.naming =
            Some(serde_json::from_value(json!({"deleteEmptyNamespaces": true})).unwrap());
        let clearing = rules(&offering);
        assert!(covers(&clearing, "", "namespaces", "delete"));
        assert!(covers(&clearing, "*", "*", "list"));
        assert!(
            !covers(&clearing, "*", "*", "get") && !covers(&clearing, "*", "*", "watch"),
            "listing (metadata) is all the emptiness check needs"
        );
        assert!(!clearing.iter().any(|r| r.verbs.contains(&"*".to_string())));
    }

    #[test]
    fn published_resources_are_labelled_for_the_agent() {
        let (offering, names) = offering(json!(null));
        let published = published_resources(&offering, &names);
        assert_eq!(published.len(), 2);
        assert_eq!(
            published[0].metadata.name.as_deref(),
            Some("team-a.databases.dbs")
        );
        assert_eq!(
            published[0].metadata.labels.as_ref().unwrap()[AGENT_LABEL],
            "team-a-databases"
        );
    }
}
