use super::*;

const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
const ENDPOINT: &str = "https://kcp/services/apiexport/root/export";

fn key(name: &str) -> RemoteKey {
    RemoteKey {
        cluster: "c".into(),
        namespace: "ns".into(),
        name: name.into(),
    }
}

fn object(version: &str) -> DynamicObject {
    let resource =
        kube::api::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("g", "v1", "W"));
    let mut object = DynamicObject::new("w", &resource);
    object.metadata.resource_version = Some(version.into());
    object
}

fn queue() -> (WorkQueue, Arc<Echoes>) {
    let echoes = Arc::new(Echoes::default());
    let queue = WorkQueue::new(echoes.clone(), RETRY, QueueMetrics::unregistered());
    queue.route("c", ENDPOINT);
    (queue, echoes)
}

/// Every key ready now, each claimed and released at once.
fn drain(queue: &WorkQueue) -> Vec<String> {
    std::iter::from_fn(|| queue.pop().map(|claim| claim.key().name.clone())).collect()
}

#[test]
fn a_key_added_many_times_waits_once_in_order() {
    let (queue, _) = queue();
    for name in ["a", "b", "a", "a"] {
        queue.add(key(name));
    }
    assert_eq!(drain(&queue), ["a", "b"]);
}

#[test]
fn a_claim_names_the_endpoint_of_its_cluster() {
    let (queue, _) = queue();
    queue.add(key("a"));
    let claim = queue.pop().expect("a is ready");
    assert_eq!(claim.endpoint(), ENDPOINT);
}

#[test]
fn keys_of_clusters_without_an_endpoint_are_dropped() {
    let (queue, _) = queue();
    queue.add(RemoteKey {
        cluster: "unknown".into(),
        ..key("a")
    });
    queue.add(key("b"));
    assert_eq!(drain(&queue), ["b"]);
}

#[test]
fn a_key_changed_while_in_flight_runs_once_more_afterwards() {
    let (queue, _) = queue();
    queue.add(key("a"));
    let claim = queue.pop().expect("a is ready");
    queue.add(key("a"));
    queue.add(key("a"));
    assert!(queue.pop().is_none(), "a key never runs twice at once");
    drop(claim);
    assert_eq!(drain(&queue), ["a"], "one rerun for all changes meanwhile");
    assert!(drain(&queue).is_empty());
}

#[test]
fn echoes_of_our_writes_do_not_wake_a_key() {
    let (queue, echoes) = queue();
    echoes.wrote(&key("a"), Side::Kcp, &object("10"));
    echoes.wrote(&key("a"), Side::Service, &object("20"));
    queue.observed_kcp(key("a"), ENDPOINT, &object("10"));
    queue.observed_local(key("a"), &object("20"));
    assert!(drain(&queue).is_empty());
    queue.observed_local(key("a"), &object("21"));
    assert_eq!(drain(&queue), ["a"], "any other version is a change");
}

#[test]
fn events_seen_in_flight_rerun_unless_the_reconcile_wrote_them() {
    let (queue, echoes) = queue();
    queue.add(key("a"));
    let claim = queue.pop().expect("a is ready");
    // The watch brings the write before the write's answer is recorded.
    queue.observed_kcp(key("a"), ENDPOINT, &object("10"));
    queue.observed_local(key("a"), &object("20"));
    echoes.wrote(&key("a"), Side::Kcp, &object("10"));
    echoes.wrote(&key("a"), Side::Service, &object("20"));
    drop(claim);
    assert!(drain(&queue).is_empty(), "only echoes were seen");

    queue.add(key("a"));
    let claim = queue.pop().expect("a is ready");
    queue.observed_kcp(key("a"), ENDPOINT, &object("11"));
    echoes.wrote(&key("a"), Side::Kcp, &object("12"));
    drop(claim);
    assert_eq!(drain(&queue), ["a"], "someone else changed it meanwhile");
}

#[test]
fn a_kcp_event_routes_its_cluster_and_starts_the_latency_clock() {
    let echoes = Arc::new(Echoes::default());
    let queue = WorkQueue::new(echoes, RETRY, QueueMetrics::unregistered());
    queue.observed_kcp(key("a"), ENDPOINT, &object("10"));
    let claim = queue.pop().expect("the event routed cluster c");
    assert!(claim.succeeded(None).is_some(), "the change was seen");
    queue.add(key("a"));
    let claim = queue.pop().expect("a is ready");
    assert!(claim.succeeded(None).is_none(), "nothing seen since");
}

#[tokio::test(start_paused = true)]
async fn next_waits_for_a_key() {
    let (queue, _) = queue();
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.next().await.key().name.clone() }
    });
    tokio::task::yield_now().await;
    queue.add(key("a"));
    assert_eq!(waiting.await.expect("next"), "a");
}

/// The next claim, and how long it took to come.
async fn timed(queue: &WorkQueue) -> (Claim, Duration) {
    let start = tokio::time::Instant::now();
    let claim = queue.next().await;
    (claim, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_per_key_and_reset_on_success() {
    let (queue, _) = queue();
    queue.add(key("a"));
    assert_eq!(queue.next().await.failed(), Duration::from_secs(1));
    let (claim, waited) = timed(&queue).await;
    assert_eq!(waited, Duration::from_secs(1));
    assert_eq!(claim.failed(), Duration::from_secs(2));
    let (claim, waited) = timed(&queue).await;
    assert_eq!(waited, Duration::from_secs(2));
    assert!(claim.succeeded(None).is_none());
    queue.add(key("a"));
    assert_eq!(queue.next().await.failed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_requeue_comes_after_its_delay_and_timers_do_not_pile_up() {
    let (queue, _) = queue();
    queue.add(key("a"));
    queue.next().await.succeeded(Some(Duration::from_secs(30)));
    queue.schedule(key("a"), Duration::from_secs(5));
    let (claim, waited) = timed(&queue).await;
    assert_eq!(waited, Duration::from_secs(30));
    drop(claim);
    assert!(drain(&queue).is_empty(), "one timer, one run");
}

#[test]
fn depth_adds_retries_and_durations_are_counted() {
    let metrics = QueueMetrics::unregistered();
    let queue = WorkQueue::new(Arc::default(), RETRY, metrics.clone());
    queue.route("c", ENDPOINT);
    for name in ["a", "b", "a"] {
        queue.add(key(name));
    }
    assert_eq!((metrics.depth.get(), metrics.adds.get()), (2, 2));
    let claim = queue.pop().expect("a");
    assert_eq!(metrics.depth.get(), 1);
    assert_eq!(metrics.queue_duration.get_sample_count(), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async { claim.failed() });
    assert_eq!(metrics.retries.get(), 1);
    assert_eq!(metrics.work_duration.get_sample_count(), 1);
    drop(queue);
    assert_eq!(metrics.depth.get(), 0, "a stopped queue waits for nothing");
}

#[test]
fn a_drained_queue_gives_the_room_of_its_keys_back() {
    let (queue, _) = queue();
    for i in 0..10_000 {
        let name = format!("w{i}");
        queue.observed_kcp(key(&name), ENDPOINT, &object("1"));
    }
    let full = queue.state().queued.capacity();
    assert!(full >= 10_000);
    while let Some(claim) = queue.pop() {
        claim.succeeded(None);
    }
    let state = queue.state();
    let rooms = [
        state.waiting.capacity(),
        state.queued.capacity(),
        state.observed.capacity(),
        state.in_flight.capacity(),
    ];
    assert!(
        rooms.iter().all(|room| *room < 100),
        "rooms {rooms:?} left of {full}"
    );
}
