//! The agent's scenarios: initial sync, latency and deletion.

use std::time::Instant;

use anyhow::bail;
use e2e::service::patch_params;
use kube::api::{Api, DynamicObject, ListParams, Patch};
use serde_json::json;

use crate::config::{
    AFTER_DELETION_WAIT, CONSUMER_NAMESPACE, Cli, Figures, READY, SAMPLE_TIMEOUT, STEADY_WINDOW,
    Size, percentile, seconds,
};
use crate::probe::{
    Probe, agent_errors, connections_to, costs, cpu_seconds, memory_bytes, settle, wait_for_worker,
};
use crate::stage::{Stage, cleanup, create_widget, is_gone, local_name};

// ---------------------------------------------------------------------------
// Scenarios

/// The agent's initial sync of `size`, then its status sync, with memory and
/// CPU, and its memory once every object is deleted again.
pub(crate) async fn initial_run(cli: &Cli, probe: &Probe, size: Size) -> anyhow::Result<Figures> {
    let total = size.total();
    let mut stage = Stage::new("bench-init", size.workspaces, cli.setup_concurrency).await?;
    let mut f = Figures::new();

    // The agent with every workspace bound and no objects, once its sync
    // worker runs and it is idle.
    stage.start_agent().await?;
    let pid = stage.agent()?.pid();
    wait_for_worker(stage.agent()?).await?;
    settle(pid).await;
    f.insert(
        "rss_empty".into(),
        memory_bytes(pid, "VmRSS").unwrap_or(f64::NAN),
    );
    f.insert("setup.bind_s".into(), stage.bound_in.as_secs_f64());
    let kcp_port = stage
        .provider
        .kcp
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok());
    f.insert(
        "kcp_connections".into(),
        kcp_port
            .and_then(|port| connections_to(pid, port))
            .map_or(f64::NAN, |n| n as f64),
    );
    stage.stop_agent().await?;

    eprintln!("bench:   creating {total} widgets with the agent stopped");
    stage.create_objects("w", size.objects).await?;
    let (copies, copies_watch) = stage.watch_copies();
    copies.wait_until_ready(1).await?;

    // Sync down: the agent starts with every object waiting.
    let before = probe.begin(0).await;
    let spawned = stage.start_agent().await?;
    let pid = stage.agent()?.pid();
    let (first, last) = copies
        .wait_for_count("copies", total, size.timeout(), |k| !is_gone(k))
        .await?;
    let cpu_at_last = cpu_seconds(pid).unwrap_or_default();
    let idle = settle(pid).await;
    let after = probe.end(pid).await;
    f.insert("sync.first_s".into(), seconds(spawned, first));
    f.insert("sync.total_s".into(), seconds(spawned, last));
    f.insert("sync.window_s".into(), seconds(first, last));
    f.insert("sync.rate".into(), window_rate(total, first, last));
    f.insert("sync.tail_s".into(), seconds(last, idle));
    f.insert("sync.cpu_s_at_last".into(), cpu_at_last);
    f.insert("sync.errors".into(), agent_errors(stage.agent()?).await);
    f.extend(costs("sync", &before, &after, total, &probe.background));

    // Steady state with every object synced.
    let cpu_before = cpu_seconds(pid).unwrap_or_default();
    tokio::time::sleep(STEADY_WINDOW).await;
    let cpu_after = cpu_seconds(pid).unwrap_or_default();
    f.insert(
        "idle_cpu_percent".into(),
        100.0 * (cpu_after - cpu_before) / STEADY_WINDOW.as_secs_f64(),
    );
    f.insert("cpu_s_to_idle".into(), cpu_before);
    f.insert(
        "rss_steady".into(),
        memory_bytes(pid, "VmRSS").unwrap_or(f64::NAN),
    );
    f.insert(
        "rss_peak".into(),
        memory_bytes(pid, "VmHWM").unwrap_or(f64::NAN),
    );
    stage.stop_agent().await?;

    // Status back: every copy got a status while the agent was stopped.
    let written = stage.set_status_on_copies(READY).await?;
    if written != total {
        bail!("{written} copies carry the agent's label, expected {total}");
    }
    let (kcp, kcp_watches) = stage.watch_kcp();
    kcp.wait_until_ready(stage.consumers.len()).await?;
    let before = probe.begin(0).await;
    let spawned = stage.start_agent().await?;
    let pid = stage.agent()?.pid();
    let suffix = format!("={READY}");
    let (first, last) = kcp
        .wait_for_count("statuses in kcp", total, size.timeout(), |k| {
            k.ends_with(&suffix)
        })
        .await?;
    settle(pid).await;
    let after = probe.end(pid).await;
    f.insert("status.first_s".into(), seconds(spawned, first));
    f.insert("status.total_s".into(), seconds(spawned, last));
    f.insert("status.rate".into(), window_rate(total, first, last));
    f.insert("status.errors".into(), agent_errors(stage.agent()?).await);
    f.extend(costs("status", &before, &after, total, &probe.background));

    // Every object deleted: what the agent holds should go with them.
    stage.delete_all().await?;
    kcp.wait_for_count("objects gone from kcp", total, size.timeout(), is_gone)
        .await?;
    settle(pid).await;
    tokio::time::sleep(AFTER_DELETION_WAIT).await;
    f.insert(
        "rss_deleted".into(),
        memory_bytes(pid, "VmRSS").unwrap_or(f64::NAN),
    );

    drop((copies_watch, kcp_watches));
    cleanup(stage).await;
    Ok(f)
}

/// Objects per second between the first and the last object seen; the
/// first object marks the start, so `total - 1` objects fall in the window.
pub(crate) fn window_rate(total: usize, first: Instant, last: Instant) -> f64 {
    let window = seconds(first, last);
    if total < 2 || window <= 0.0 {
        return f64::NAN;
    }
    (total - 1) as f64 / window
}

/// A minimal client doing the agent's writes for `size`: the finalizer on
/// each kcp object and the copy on the service cluster, then the status
/// back, through the export's virtual workspace like the agent. With
/// `with_events` it also records the agent's events on the kcp objects, and
/// a phase ends once they are written.
/// Sequential samples: create in kcp → copy seen on the service cluster,
/// then status written on the copy → status seen in kcp.
pub(crate) async fn latency_run(cli: &Cli, samples: usize) -> anyhow::Result<Figures> {
    let mut stage = Stage::new("bench-lat", cli.latency_workspaces, cli.setup_concurrency).await?;
    let (copies, copies_watch) = stage.watch_copies();
    let (kcp, kcp_watches) = stage.watch_kcp();
    copies.wait_until_ready(1).await?;
    kcp.wait_until_ready(stage.consumers.len()).await?;
    stage.start_agent().await?;
    let service = stage.provider.service.clone();

    // One warm-up round trip per workspace, not counted.
    for consumer in &stage.consumers {
        let api = stage.kcp_widgets(consumer);
        create_widget(&api, &stage.resource, "warm-up", true).await?;
        let key = format!("{}/warm-up", consumer.workspace.cluster);
        copies.wait_for(&key, SAMPLE_TIMEOUT).await?;
    }

    let mut objects = Vec::with_capacity(samples);
    let mut create_ms = Vec::with_capacity(samples);
    for i in 0..samples {
        let consumer = &stage.consumers[i % stage.consumers.len()];
        let name = format!("lat-{i:05}");
        let api = stage.kcp_widgets(consumer);
        let sent = Instant::now();
        create_widget(&api, &stage.resource, &name, false).await?;
        let key = format!("{}/{name}", consumer.workspace.cluster);
        let seen = copies.wait_for(&key, SAMPLE_TIMEOUT).await?;
        create_ms.push(seconds(sent, seen) * 1000.0);
        objects.push((consumer.workspace.cluster.clone(), name));
    }

    let mut status_ms = Vec::with_capacity(samples);
    for (i, (cluster, name)) in objects.iter().enumerate() {
        let object = json!({"metadata": {"name": name, "namespace": CONSUMER_NAMESPACE}});
        let (namespace, local) = local_name(&object, cluster)?;
        let phase = format!("p{i}");
        let copies_api: Api<DynamicObject> =
            Api::namespaced_with(service.clone(), &namespace, &stage.resource);
        let sent = Instant::now();
        copies_api
            .patch_status(
                &local,
                &patch_params(),
                &Patch::Merge(json!({"status": {"phase": phase}})),
            )
            .await?;
        let seen = kcp
            .wait_for(&format!("{cluster}/{name}={phase}"), SAMPLE_TIMEOUT)
            .await?;
        status_ms.push(seconds(sent, seen) * 1000.0);
    }

    let mut f = Figures::new();
    for (path, mut values) in [("create", create_ms), ("status", status_ms)] {
        values.sort_by(f64::total_cmp);
        f.insert(format!("{path}.p50_ms"), percentile(&values, 50.0));
        f.insert(format!("{path}.p99_ms"), percentile(&values, 99.0));
        f.insert(format!("{path}.samples"), values.len() as f64);
    }
    f.insert("errors".into(), agent_errors(stage.agent()?).await);
    drop((copies_watch, kcp_watches));
    cleanup(stage).await;
    Ok(f)
}

/// Deleting every synced object in kcp → every object gone from kcp (the
/// agent deleted the copy, saw it gone and released its finalizer).
pub(crate) async fn deletion_run(cli: &Cli, probe: &Probe, size: Size) -> anyhow::Result<Figures> {
    let total = size.total();
    let mut stage = Stage::new("bench-del", size.workspaces, cli.setup_concurrency).await?;
    let (copies, copies_watch) = stage.watch_copies();
    let (kcp, kcp_watches) = stage.watch_kcp();
    copies.wait_until_ready(1).await?;
    kcp.wait_until_ready(stage.consumers.len()).await?;
    stage.start_agent().await?;
    let pid = stage.agent()?.pid();
    eprintln!("bench:   creating and syncing {total} widgets");
    stage.create_objects("d", size.objects).await?;
    copies
        .wait_for_count("copies", total, size.timeout(), |k| !is_gone(k))
        .await?;
    settle(pid).await;

    let before = probe.begin(pid).await;
    let start = Instant::now();
    stage.delete_all().await?;
    let (_, last) = kcp
        .wait_for_count("objects gone from kcp", total, size.timeout(), is_gone)
        .await?;
    let after = probe.end(pid).await;
    let left = Api::<DynamicObject>::all_with(stage.provider.service.clone(), &stage.resource)
        .list(&ListParams::default().labels(&stage.copy_selector()))
        .await?
        .items
        .len();
    let mut f = Figures::new();
    f.insert("delete.total_s".into(), seconds(start, last));
    f.insert(
        "delete.rate".into(),
        total as f64 / seconds(start, last).max(f64::EPSILON),
    );
    f.insert("delete.copies_left".into(), left as f64);
    f.insert("delete.errors".into(), agent_errors(stage.agent()?).await);
    f.extend(costs("delete", &before, &after, total, &probe.background));
    drop((copies_watch, kcp_watches));
    cleanup(stage).await;
    Ok(f)
}
