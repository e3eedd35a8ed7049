//! The operator with many consumers: W child workspaces selected by label,
//! one offering binding them all, then one more workspace once the rest are
//! bound (which must cost about one binding, not W).

use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::offering::OfferingScene;
use e2e::poll::poll_until;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use sync_agent::api::kcp::tenancy_v1alpha1::{PHASE_READY, Workspace};

use crate::config::{Figures, seconds};
use crate::probe::{Probe, costs};

/// The label the offering selects its consumers by.
const LABEL: (&str, &str) = ("bench-tier", "gold");
/// Longest wait for the operator to bind every workspace.
const BIND_TIMEOUT: Duration = Duration::from_secs(3600);

/// Creates `count` labelled child workspaces of `parent` and waits until
/// all are Ready.
async fn create_children(
    workspaces: &Api<Workspace>,
    names: impl Iterator<Item = String>,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(names)
        .map(|name| async move {
            let workspace: Workspace = serde_json::from_value(json!({
                "apiVersion": "tenancy.kcp.io/v1alpha1", "kind": "Workspace",
                "metadata": {"name": name, "labels": {LABEL.0: LABEL.1}},
                "spec": {},
            }))?;
            workspaces
                .create(&PostParams::default(), &workspace)
                .await
                .with_context(|| format!("creating workspace {name}"))?;
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let selector = format!("{}={}", LABEL.0, LABEL.1);
    poll_until("the workspaces to be ready", BIND_TIMEOUT, async || {
        let list = workspaces
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .filter(|w| w.status.as_ref().is_some_and(|s| s.phase == PHASE_READY))
            .count();
        if ready >= count {
            Ok(())
        } else {
            Err(format!("{ready} of {count} ready"))
        }
    })
    .await
}

/// Waits until the offering's status counts `count` bound consumers.
async fn wait_bound(scene: &OfferingScene, count: usize) -> anyhow::Result<Instant> {
    let offerings = scene.offerings();
    let mut last_report = Instant::now();
    poll_until(
        &format!("{count} bound consumers"),
        BIND_TIMEOUT,
        async || {
            let offering = offerings.get("bench").await.map_err(|e| e.to_string())?;
            let bound = offering
                .status
                .and_then(|s| s.consumers)
                .map_or(0, |c| usize::try_from(c.bound).unwrap_or_default());
            if bound >= count {
                return Ok(Instant::now());
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                eprintln!("bench:   bound: {bound} of {count}");
                last_report = Instant::now();
            }
            Err(format!("{bound} bound"))
        },
    )
    .await
}

/// One run with `workspaces` consumers.
pub(crate) async fn operator_run(
    probe: &Probe,
    workspaces: usize,
    setup_concurrency: usize,
) -> anyhow::Result<Figures> {
    let scene = OfferingScene::new("bench-op", &[]).await?;
    let pid = scene.operator.process.pid();
    let kcp = &scene.provider.kcp;
    let parent = kcp.create_workspace("root", "bench-op-consumers").await?;
    let children: Api<Workspace> = Api::all(kcp.client(&parent.path)?);
    let mut f = Figures::new();

    eprintln!("bench:   creating {workspaces} consumer workspaces");
    let start = Instant::now();
    let names = (0..workspaces).map(|i| format!("c{i:05}"));
    create_children(&children, names, workspaces, setup_concurrency).await?;
    f.insert("op.setup_s".into(), seconds(start, Instant::now()));

    // Ready first (agent running), so the operator looks again at its
    // resync pace rather than at the pace of an offering still waiting.
    let _agent = scene.publish("bench", json!({})).await?;
    let spec = scene.spec(json!({
        "consumers": {"selector": {"parent": parent.path,
                                   "labelSelector": {"matchLabels": {LABEL.0: LABEL.1}}}},
    }));
    let before = probe.begin(pid).await;
    let applied = Instant::now();
    scene.apply("bench", spec).await?;
    let bound = wait_bound(&scene, workspaces).await?;
    let after = probe.end(pid).await;
    f.insert("op.bind_all_s".into(), seconds(applied, bound));
    f.extend(costs(
        "op.all",
        &before,
        &after,
        workspaces,
        &probe.background,
    ));

    // One more: from its create request to bound, and what kcp and the
    // operator spent meanwhile. Not from Ready: the operator watches the
    // parent's children and binds one as soon as it turns Ready, often
    // before a poll for Ready would see it.
    let before = probe.begin(pid).await;
    let created = Instant::now();
    create_children(
        &children,
        std::iter::once(format!("c{workspaces:05}")),
        workspaces + 1,
        1,
    )
    .await?;
    let bound = wait_bound(&scene, workspaces + 1).await?;
    let after = probe.end(pid).await;
    f.insert("op.one_s".into(), seconds(created, bound));
    f.extend(costs("op.one", &before, &after, 1, &probe.background));

    // Retain: the offering goes, the bindings go with the workspaces.
    scene.delete_and_wait("bench").await?;
    parent.delete(kcp).await?;
    scene.provider.cleanup().await?;
    Ok(f)
}
