use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Config;
use kube::api::ApiResource;
use kube::config::Kubeconfig;

use super::*;
use crate::credentials::KcpCredentials;
use crate::fetch::targets;

fn offering(yaml: &str) -> PublishedOffering {
    serde_saphyr::from_str(yaml).expect("offering fixture")
}

fn facts(yaml: &str) -> Facts {
    serde_saphyr::from_str(yaml).expect("facts fixture")
}

fn kcp() -> Kcp {
    Kcp::new(KcpCredentials {
        kubeconfig: Kubeconfig::from_yaml(include_str!("fixtures/kcp-admin.kubeconfig")).unwrap(),
        config: Config::new("https://kcp.example:6443/clusters/root".parse().unwrap()),
    })
}

const DEFAULTS: AgentDefaults<'static> = AgentDefaults {
    image: "registry.example/sync-agent:v1",
    kcp_url: None,
};

fn desired(offering: &PublishedOffering, facts: &Facts) -> Desired {
    let names = Names::of(offering).unwrap();
    build(offering, &names, facts, &kcp(), DEFAULTS).unwrap()
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn identity_objects_of_an_old_export_name_and_dropped_resources_are_orphans() {
    let offering = offering(include_str!("fixtures/offering.yaml"));
    let desired = desired(
        &offering,
        &facts(include_str!("fixtures/facts-renamed-export.yaml")),
    );
    assert_eq!(
        desired.orphans,
        Orphans {
            kcp_roles: strings(&["syncagent:databases-old", "syncagent:databases-old:bind"]),
            kcp_bindings: strings(&["syncagent:databases-old", "syncagent:databases-old:access"]),
            kcp_accounts: strings(&["sync-agent-databases-old"]),
            published_resources: strings(&["team-a.databases.backups"]),
            disruption_budget: None,
        }
    );
    assert!(desired.kcp_namespace.is_none(), "the namespace exists");
}

#[test]
fn without_bind_groups_the_bind_binding_is_not_built_and_an_existing_one_goes() {
    let offering = offering(include_str!("fixtures/no-bind-groups.yaml"));
    let desired = desired(
        &offering,
        &facts(include_str!("fixtures/facts-renamed-export.yaml")),
    );
    assert!(desired.kcp_bind_binding.is_none());
    assert!(
        desired
            .orphans
            .kcp_bindings
            .contains(&"syncagent:databases:bind".to_string()),
        "{:?}",
        desired.orphans
    );
    let pod = desired.deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/sync-agent:v2")
    );
}

#[test]
fn a_first_build_creates_the_namespace_and_grants_every_kind_and_nothing_else() {
    let offering = offering(include_str!("fixtures/offering.yaml"));
    let desired = desired(
        &offering,
        &facts(include_str!("fixtures/facts-two-kinds.yaml")),
    );
    assert!(desired.kcp_namespace.is_some());
    assert_eq!(desired.orphans, Orphans::default());
    let granted: BTreeSet<String> = desired
        .cluster_role
        .rules
        .unwrap()
        .into_iter()
        .flat_map(|r| r.resources.unwrap_or_default())
        .collect();
    for resource in ["databases", "databases/status", "backups", "secrets"] {
        assert!(granted.contains(resource), "{resource}: {granted:?}");
    }
    let only_databases = desired_with_kinds(&offering, &["databases"]);
    let granted: BTreeSet<String> = only_databases
        .cluster_role
        .rules
        .unwrap()
        .into_iter()
        .flat_map(|r| r.resources.unwrap_or_default())
        .collect();
    assert!(!granted.contains("backups"), "{granted:?}");
    assert!(!granted.contains("secrets"), "{granted:?}");
}

#[test]
fn the_agent_may_delete_namespaces_only_when_a_resource_deletes_empty_ones() {
    let mut offering = offering(include_str!("fixtures/offering.yaml"));
    let facts = facts(include_str!("fixtures/facts-two-kinds.yaml"));
    let namespace_verbs = |desired: Desired| {
        desired
            .cluster_role
            .rules
            .unwrap()
            .into_iter()
            .find(|r| r.resources.as_deref() == Some(&["namespaces".to_string()][..]))
            .map(|r| r.verbs)
            .unwrap_or_default()
    };
    let verbs = namespace_verbs(desired(&offering, &facts));
    assert!(!verbs.contains(&"delete".to_string()), "{verbs:?}");
    offering.spec.resources[0].spec.naming =
        Some(serde_json::from_value(serde_json::json!({"deleteEmptyNamespaces": true})).unwrap());
    let verbs = namespace_verbs(desired(&offering, &facts));
    assert!(verbs.contains(&"delete".to_string()), "{verbs:?}");
}

fn desired_with_kinds(offering: &PublishedOffering, resources: &[&str]) -> Desired {
    let mut facts = Facts::default();
    facts.kinds.synced = resources
        .iter()
        .map(|r| crate::desired::cluster::GroupResource {
            group: "db.example.io".into(),
            resource: r.to_string(),
        })
        .collect();
    desired(offering, &facts)
}

#[test]
fn the_agents_secret_carries_no_data_and_its_kubeconfig_points_at_the_workspace() {
    let offering = offering(include_str!("fixtures/offering.yaml"));
    let desired = desired(&offering, &Facts::default());
    assert!(desired.agent_secret.data.is_none());
    assert_eq!(
        desired.agent_secret.metadata.name.as_deref(),
        Some("databases-kcp-kubeconfig")
    );
    assert!(
        desired
            .agent_kubeconfig
            .contains("https://kcp.example:6443/clusters/root:providers:db"),
        "{}",
        desired.agent_kubeconfig
    );
    assert!(!desired.agent_kubeconfig.contains("admin-token"));
    let names = Names::of(&offering).unwrap();
    let elsewhere = AgentDefaults {
        kcp_url: Some("https://kcp.internal:443/clusters/root"),
        ..DEFAULTS
    };
    let moved = build(&offering, &names, &Facts::default(), &kcp(), elsewhere).unwrap();
    assert!(
        moved
            .agent_kubeconfig
            .contains("https://kcp.internal:443/clusters/root:providers:db"),
        "{}",
        moved.agent_kubeconfig
    );
}

/// Kind, namespace and name of `object`.
fn key<K: Resource<DynamicType = ()>>(object: &K) -> (String, Option<String>, String) {
    (
        K::kind(&()).to_string(),
        object.meta().namespace.clone(),
        object.name_any(),
    )
}

#[test]
fn every_service_object_built_is_one_the_fetch_checks_for_a_foreign_owner() {
    let offering = offering(include_str!("fixtures/offering.yaml"));
    let names = Names::of(&offering).unwrap();
    let desired = desired(&offering, &Facts::default());
    let mut built = vec![
        key(&desired.service_account),
        key(&desired.cluster_role),
        key(&desired.cluster_role_binding),
        key(&desired.role),
        key(&desired.role_binding),
        key(&desired.deployment),
        key(&desired.metrics_service),
    ];
    built.extend(desired.published_resources.iter().map(key));
    built.extend(desired.disruption_budget.iter().map(key));
    let checked: Vec<(String, Option<String>, String)> = targets(&offering, &names)
        .into_iter()
        .map(|t| (t.resource.kind, t.namespace, t.name))
        .collect();
    built.sort();
    let mut sorted = checked.clone();
    sorted.sort();
    assert_eq!(built, sorted);
    let published = ApiResource::erase::<PublishedResource>(&());
    assert!(
        targets(&offering, &names)
            .iter()
            .any(|t| t.resource == published && t.name == "team-a.databases.dbs")
    );
}

#[test]
fn the_agent_pods_keep_a_disruption_budget_while_there_is_a_standby() {
    let two = offering(include_str!("fixtures/offering.yaml"));
    let facts_with_budget = facts(
        "logicalCluster: 2x8ba0e7\nkinds: {}\nserviceObjects:\n  - kind: PodDisruptionBudget\n    metadata: {name: databases-sync-agent, namespace: team-a}\n",
    );
    let desired_two = desired(&two, &facts_with_budget);
    let budget = desired_two
        .disruption_budget
        .expect("two replicas by default");
    assert_eq!(
        budget.spec.unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    assert_eq!(desired_two.orphans.disruption_budget, None);

    let mut one = two.clone();
    one.spec.agent = Some(serde_json::from_value(serde_json::json!({"replicas": 1})).unwrap());
    let desired_one = desired(&one, &facts_with_budget);
    assert!(desired_one.disruption_budget.is_none());
    assert_eq!(
        desired_one.orphans.disruption_budget.as_deref(),
        Some("databases-sync-agent"),
        "the budget of two replicas goes"
    );
    let off = serde_json::json!({"podDisruptionBudget": {"enabled": false}});
    let mut switched_off = two.clone();
    switched_off.spec.agent = Some(serde_json::from_value(off).unwrap());
    assert!(
        desired(&switched_off, &facts("logicalCluster: x\nkinds: {}\n"))
            .disruption_budget
            .is_none()
    );
}
