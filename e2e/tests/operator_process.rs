//! The operator as a process on the real servers: two replicas with leader
//! election, one reconciling at a time, and a graceful hand-over on SIGTERM.

use std::time::{Duration, Instant};

use e2e::agent::{AgentProcess, http_get};
use e2e::offering::{OfferingScene, TIMEOUT, start_operator};
use e2e::pod::Pod;
use e2e::poll::poll_until;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

/// Whether the operator behind `process` has reconciled an offering.
async fn reconciled(process: &AgentProcess) -> bool {
    let metrics = process.metrics().await.expect("operator metrics");
    metrics.lines().any(|l| {
        l.starts_with(r#"controller_runtime_reconcile_total{controller="publishedoffering""#)
    })
}

/// The operator's `leader_election_master_status` for its Lease.
async fn leader_status(process: &AgentProcess) -> String {
    let metrics = process.metrics().await.expect("operator metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"leader_election_master_status{name="offering-operator"} "#))
        .unwrap_or("missing")
        .to_string()
}

/// Who holds the operator's Lease, once someone does and it is not `not`.
async fn holder(leases: &Api<Lease>, not: Option<&str>) -> String {
    poll_until(
        "a new holder of the operator's Lease",
        TIMEOUT,
        async || {
            let lease = leases
                .get_opt("offering-operator")
                .await
                .map_err(|e| e.to_string())?;
            match lease.and_then(|l| l.spec).and_then(|s| s.holder_identity) {
                Some(holder) if !holder.is_empty() && Some(holder.as_str()) != not => Ok(holder),
                other => Err(format!("holder {other:?}")),
            }
        },
    )
    .await
    .expect("a leader")
}

#[tokio::test]
async fn two_operators_elect_one_leader_and_hand_over_on_shutdown() {
    let provider = OfferingScene::provider("op-leader")
        .await
        .expect("provider");
    let namespace = provider.namespace.clone();
    let lease_namespace = format!("--namespace={namespace}");
    let args = ["--enable-leader-election", lease_namespace.as_str()];
    let leases: Api<Lease> = Api::namespaced(provider.service.clone(), &namespace);

    let first = start_operator(&provider.env, &namespace, &args)
        .await
        .expect("first operator");
    let first_holder = holder(&leases, None).await;
    let second = start_operator(&provider.env, &namespace, &args)
        .await
        .expect("second operator");
    // A standby is ready too: it takes over on failover.
    for operator in [&first, &second] {
        http_get(&format!("http://{}/readyz", operator.health_address))
            .await
            .expect("ready");
    }

    let scene = OfferingScene {
        provider,
        operator: Pod::from_process(second),
    };
    let _one = scene
        .publish("one", json!({"agent": {"replicas": 1}}))
        .await
        .expect("Ready under the first leader");
    assert!(reconciled(&first).await, "the leader reconciles");
    assert!(
        !reconciled(&scene.operator.process).await,
        "the standby does not reconcile"
    );
    assert_eq!(leader_status(&first).await, "1");
    assert_eq!(leader_status(&scene.operator.process).await, "0");

    let stopping = Instant::now();
    let exit = first.stop().await.expect("the leader stops");
    assert!(exit.success(), "a graceful shutdown exits 0: {exit}");
    let second_holder = holder(&leases, Some(&first_holder)).await;
    let takeover = stopping.elapsed();
    eprintln!("the standby {second_holder} took over {takeover:?} after SIGTERM");
    // Released, not expired: the standby takes it at its next try (every
    // 2 s, after the leader drained its reconciles) instead of waiting out
    // the Lease's 15 s, which takes at least 13 s.
    assert!(
        takeover < Duration::from_secs(10),
        "took over after {takeover:?}"
    );

    // The new leader reads ready again once its cache of offerings synced.
    let readyz = format!("http://{}/readyz", scene.operator.process.health_address);
    poll_until("the new leader to be ready", TIMEOUT, async || {
        http_get(&readyz).await.map(drop)
    })
    .await
    .expect("the new leader is ready");

    let _two = scene
        .publish("two", json!({"agent": {"replicas": 1}}))
        .await
        .expect("Ready under the new leader");
    assert!(
        reconciled(&scene.operator.process).await,
        "the new leader reconciles"
    );
    assert_eq!(leader_status(&scene.operator.process).await, "1");
    scene.provider.cleanup().await.expect("cleanup");
}
