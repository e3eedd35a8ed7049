//! Sync across a sharded kcp (`testenv --sharded`: a root shard, `shard-1`,
//! the cache server and the front proxy). Consumers are pinned to each
//! shard; the export's endpoint slice then lists one virtual workspace URL
//! per shard, and one agent syncs both through them, primaries and related
//! objects alike; the operator binds consumers on both shards through the
//! front proxy. Run by the test
//! command in its own sharded test environment, one test at a time (one of
//! them restarts a shard); they fail, rather than pass vacuously, against a
//! single shard.

use std::collections::HashMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::env::EnvFile;
use e2e::offering::OfferingScene;
use e2e::poll::{KCP_SLOW_TIMEOUT, poll_until};
use e2e::scene::{Scene, TIMEOUT};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sync_agent::api::kcp::apis_v1alpha1::APIExportEndpointSlice;
use sync_agent::api::kcp::apis_v1alpha2::APIBinding;
use sync_agent::api::kcp::tenancy_v1alpha1::Workspace;

/// The shards of the sharded test environment, root first.
fn shards() -> Vec<String> {
    let shards = EnvFile::load().expect("env file").kcp_shards;
    assert!(
        shards.len() >= 2,
        "these tests need a sharded kcp (testenv --sharded); the env file lists {shards:?}"
    );
    shards
}

/// The scene's endpoint slice's URLs once it lists `count` of them.
async fn endpoint_urls(scene: &Scene, count: usize) -> Vec<String> {
    urls_of(&scene.provider.kcp_client, &scene.provider.export, count).await
}

/// The URLs of the endpoint slice `name` (in the provider workspace of
/// `client`) once it lists `count` of them.
async fn urls_of(client: &Client, name: &str, count: usize) -> Vec<String> {
    let slices: Api<APIExportEndpointSlice> = Api::all(client.clone());
    poll_until(
        &format!("{count} endpoints in the endpoint slice"),
        KCP_SLOW_TIMEOUT,
        async || {
            let slice = slices.get(name).await.map_err(|e| e.to_string())?;
            let urls: Vec<String> = slice
                .status
                .map(|s| s.endpoints.into_iter().map(|e| e.url).collect())
                .unwrap_or_default();
            if urls.len() == count {
                Ok(urls)
            } else {
                Err(format!("{urls:?}"))
            }
        },
    )
    .await
    .expect("one endpoint per shard")
}

/// Waits until the widget's kcp object shows `check` true.
async fn wait_in_kcp(
    scene: &Scene,
    client: &Client,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let widgets = scene.kcp_widgets(client);
    poll_until(what, TIMEOUT, async || {
        let object = widgets.get(name).await.map_err(|e| e.to_string())?;
        if check(&object.data) {
            Ok(())
        } else {
            Err(format!(
                "{}; agent log:\n{}",
                object.data,
                scene.agent.log_tail()
            ))
        }
    })
    .await
    .expect(what);
}

#[tokio::test]
async fn one_agent_syncs_consumers_on_both_shards_both_ways_through_each_shards_endpoint() {
    let shards = shards();
    let scene = Scene::new("sharded", json!({})).await;
    let mut consumers = Vec::new();
    for shard in &shards {
        consumers.push(scene.consumer_on("consumer", Some(shard)).await);
    }

    // A shard lists its virtual workspace once it holds a binding: one URL
    // per shard, each on that shard's own address, not the front proxy's.
    let urls = endpoint_urls(&scene, shards.len()).await;
    let hosts: std::collections::BTreeSet<&str> =
        urls.iter().filter_map(|u| u.split('/').nth(2)).collect();
    assert_eq!(hosts.len(), shards.len(), "one host per shard: {urls:?}");
    let proxy = scene.provider.kcp.url();
    assert!(
        urls.iter().all(|u| !u.starts_with(&proxy)),
        "virtual workspaces are served by the shards: {urls:?}"
    );

    // Down: an object in each consumer gets its copy.
    for (i, (_, client)) in consumers.iter().enumerate() {
        scene
            .create_widget(client, &format!("w{i}"), &format!("c{i}"))
            .await;
    }
    let mut copies = Vec::new();
    for (i, (consumer, _)) in consumers.iter().enumerate() {
        let copy = scene.local_copy(&consumer.cluster, &format!("w{i}")).await;
        assert_eq!(copy.data["spec"]["color"], format!("c{i}"));
        copies.push(copy);
    }

    // Up: the provider's status reaches each consumer.
    for (i, ((consumer, client), copy)) in consumers.iter().zip(&copies).enumerate() {
        scene
            .local_api(&consumer.cluster)
            .patch_status(
                &copy.name_any(),
                &e2e::service::patch_params(),
                &Patch::Merge(json!({"status": {"phase": format!("ready-{i}")}})),
            )
            .await
            .expect("status set by the provider");
        let phase = format!("ready-{i}");
        wait_in_kcp(&scene, client, &format!("w{i}"), "the status in kcp", |o| {
            o["status"]["phase"] == phase.as_str()
        })
        .await;
    }

    // A consumer's edit on the second shard reaches its copy.
    let (second, second_client) = &consumers[1];
    scene
        .kcp_widgets(second_client)
        .patch(
            "w1",
            &e2e::service::patch_params(),
            &Patch::Merge(json!({"spec": {"color": "navy"}})),
        )
        .await
        .expect("consumer edits");
    let local = scene.local_api(&second.cluster);
    let name = copies[1].name_any();
    poll_until("the edit on the service cluster", TIMEOUT, async || {
        let copy = local.get(&name).await.map_err(|e| e.to_string())?;
        if copy.data["spec"]["color"] == "navy" {
            Ok(())
        } else {
            Err(format!("{}", copy.data["spec"]))
        }
    })
    .await
    .expect("spec synced");

    // Deletion on each shard: the copy goes, then the kcp object.
    for (i, ((consumer, client), copy)) in consumers.iter().zip(&copies).enumerate() {
        let widgets = scene.kcp_widgets(client);
        let name = format!("w{i}");
        widgets
            .delete(&name, &DeleteParams::default())
            .await
            .expect("consumer deletes");
        poll_until("the kcp object to be gone", TIMEOUT, async || match widgets
            .get_opt(&name)
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(o) => Err(format!("finalizers {:?}", o.finalizers())),
        })
        .await
        .expect("kcp object deleted");
        let left = scene
            .local_api(&consumer.cluster)
            .get_opt(&copy.name_any())
            .await
            .expect("get");
        assert!(left.is_none(), "the copy went before the kcp object");
    }

    for (consumer, _) in &consumers {
        consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    }
    scene.provider.cleanup().await.expect("cleanup");
}

/// A server of the test environment as its `pids` file records it.
struct Server {
    pid: i32,
    exe: PathBuf,
    args: Vec<String>,
}

/// The `pids` file beside the servers' logs.
fn pids_file(env: &EnvFile) -> PathBuf {
    env.log_dir
        .parent()
        .expect("the log directory is inside the state directory")
        .join("pids")
}

fn server(env: &EnvFile, name: &str) -> Server {
    let pids = fs::read_to_string(pids_file(env)).expect("pids file");
    let (pid, exe) = pids
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ' ');
            (fields.next()? == name).then_some(())?;
            Some((fields.next()?.parse().ok()?, PathBuf::from(fields.next()?)))
        })
        .unwrap_or_else(|| panic!("{name} is not in the pids file"));
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("the server runs");
    let args = cmdline
        .split(|b| *b == 0)
        .skip(1)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Server { pid, exe, args }
}

/// Kills the server `name` (as a crash would) and starts it again with the
/// same arguments and data, appending to its log; the `pids` file gets the
/// new PID so the test environment still stops it.
fn crash_and_restart(env: &EnvFile, name: &str) {
    let old = server(env, name);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let log = fs::OpenOptions::new()
        .append(true)
        .open(env.log_dir.join(format!("{name}.log")))
        .expect("log");
    let mut child = Command::new(&old.exe)
        .args(&old.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("the server starts again");
    let pid = child.id();
    // The server outlives the test; testenv stops it. Reaped if it exits first.
    std::thread::spawn(move || child.wait());
    let pids = fs::read_to_string(pids_file(env)).expect("pids file");
    let updated: String = pids
        .lines()
        .map(|line| match line.split(' ').next() {
            Some(n) if n == name => format!("{name} {pid} {}\n", old.exe.display()),
            _ => format!("{line}\n"),
        })
        .collect();
    fs::write(pids_file(env), updated).expect("pids file");
}

#[tokio::test]
async fn a_crashed_shard_does_not_stop_the_other_shards_sync_and_its_own_resumes() {
    let shards = shards();
    let env = EnvFile::load().expect("env file");
    let scene = Scene::new("shardcrash", json!({})).await;
    let (root_consumer, root_client) = scene.consumer_on("consumer", Some(&shards[0])).await;
    let (second, second_client) = scene.consumer_on("consumer", Some(&shards[1])).await;
    endpoint_urls(&scene, 2).await;
    scene.create_widget(&root_client, "before", "blue").await;
    scene.create_widget(&second_client, "before", "blue").await;
    scene.local_copy(&root_consumer.cluster, "before").await;
    scene.local_copy(&second.cluster, "before").await;

    crash_and_restart(&env, &format!("kcp-{}", shards[1]));
    // While the second shard starts again, the root shard's consumers sync.
    scene.create_widget(&root_client, "during", "green").await;
    scene.local_copy(&root_consumer.cluster, "during").await;

    // Once it serves again, the agent's watch of its endpoint resumes.
    let mut widget = kube::api::DynamicObject::new("after", &scene.resource).within("apps");
    widget.data = json!({"spec": {"color": "red"}});
    let widgets = scene.kcp_widgets(&second_client);
    poll_until(
        "the restarted shard to take a widget",
        KCP_SLOW_TIMEOUT,
        async || {
            widgets
                .create(&e2e::service::post_params(), &widget)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await
    .expect("widget created on the restarted shard");
    let copy = scene.local_copy(&second.cluster, "after").await;
    assert_eq!(copy.data["spec"]["color"], "red");

    for consumer in [&root_consumer, &second] {
        consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    }
    scene.provider.cleanup().await.expect("cleanup");
}

/// Waits until `api` holds `name` with data for which `check` is true.
async fn wait_for_data<K>(api: &Api<K>, name: &str, what: &str, check: impl Fn(&K) -> bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    poll_until(what, TIMEOUT, async || {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            Some(object) if check(&object) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect(what);
}

#[tokio::test]
async fn related_objects_travel_both_ways_on_both_shards() {
    let shards = shards();
    let scene = Scene::new(
        "shardrel",
        json!({"related": [
            {"identifier": "credentials", "origin": "service", "kind": "Secret",
             "object": {"reference": {"path": "spec.secretName"}}},
            {"identifier": "settings", "origin": "kcp", "version": "v1", "resource": "configmaps",
             "object": {"reference": {"path": "spec.configName"}}}
        ]}),
    )
    .await;
    let mut consumers = Vec::new();
    for shard in &shards {
        consumers.push(scene.consumer_on("consumer", Some(shard)).await);
    }
    endpoint_urls(&scene, shards.len()).await;

    for (i, (consumer, client)) in consumers.iter().enumerate() {
        let mode = format!("mode-{i}");
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "apps");
        let settings: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "settings"}, "data": {"mode": mode}
        }))
        .expect("config map");
        config_maps
            .create(&PostParams::default(), &settings)
            .await
            .expect("consumer's config map");
        let mut widget = DynamicObject::new("db", &scene.resource).within("apps");
        widget.data = json!({"spec": {"color": "c", "secretName": "db-credentials", "configName": "settings"}});
        let widgets = scene.kcp_widgets(client);
        poll_until("a widget", TIMEOUT, async || {
            widgets
                .create(&PostParams::default(), &widget)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
        .expect("created");
        let local_namespace = scene
            .local_copy(&consumer.cluster, "db")
            .await
            .namespace()
            .expect("namespaced copy");

        // kcp -> service: the consumer's ConfigMap.
        let local_config_maps: Api<ConfigMap> =
            Api::namespaced(scene.provider.service.clone(), &local_namespace);
        wait_for_data(
            &local_config_maps,
            "settings",
            "the consumer's config map on the service cluster",
            |c| c.data.as_ref().and_then(|d| d.get("mode")) == Some(&mode),
        )
        .await;

        // service -> kcp: the provider's Secret.
        let password = format!("s3cret-{i}");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "db-credentials"}, "stringData": {"password": password}
        }))
        .expect("secret");
        Api::<Secret>::namespaced(scene.provider.service.clone(), &local_namespace)
            .create(&PostParams::default(), &secret)
            .await
            .expect("provider's secret");
        let kcp_secrets: Api<Secret> = Api::namespaced(client.clone(), "apps");
        wait_for_data(
            &kcp_secrets,
            "db-credentials",
            "the provider's secret in the workspace",
            |s| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get("password"))
                    .is_some_and(|p| p.0 == password.as_bytes())
            },
        )
        .await;

        // Deleting the primary removes the kcp-origin copy and releases the origin.
        widgets
            .delete("db", &DeleteParams::default())
            .await
            .expect("consumer deletes");
        poll_until(
            "the config map copy to go",
            TIMEOUT,
            async || match local_config_maps
                .get_opt("settings")
                .await
                .map_err(|e| e.to_string())?
            {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            },
        )
        .await
        .expect("copy removed");
        wait_for_data(
            &config_maps,
            "settings",
            "the consumer's config map to be released",
            |c| c.finalizers().is_empty(),
        )
        .await;
    }

    for (consumer, _) in &consumers {
        consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    }
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn the_operator_binds_consumers_on_both_shards_through_the_front_proxy_and_reports_a_shard_refusing_its_agent()
 {
    let shards = shards();
    let scene = OfferingScene::new("op-sharded", &[]).await.expect("scene");
    let kcp = &scene.provider.kcp;
    let parent = kcp
        .create_workspace("root", "op-parent")
        .await
        .expect("parent");
    let mut children = Vec::new();
    for shard in &shards {
        children.push(
            kcp.create_workspace_on(&parent.path, "gold", Some(shard))
                .await
                .expect("child"),
        );
    }
    let listed = kcp
        .create_workspace_on("root", "op-listed", Some(&shards[1]))
        .await
        .expect("listed");
    let workspaces: Api<Workspace> = Api::all(kcp.client(&parent.path).expect("client"));
    for child in &children {
        workspaces
            .patch(
                &child.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"tier": "gold"}}})),
            )
            .await
            .expect("label");
    }

    scene
        .apply(
            "widgets",
            scene.spec(json!({
                "agent": {"replicas": 1},
                "consumers": {
                    "workspaces": [listed.path],
                    "selector": {"parent": parent.path, "labelSelector": {"matchLabels": {"tier": "gold"}}},
                },
            })),
        )
        .await
        .expect("offering");
    let agent = scene.run_agent("widgets").await.expect("agent runs");
    let offerings = scene.offerings();
    let consumers = poll_until("three consumers bound", KCP_SLOW_TIMEOUT, async || {
        let offering = offerings.get("widgets").await.map_err(|e| e.to_string())?;
        let consumers = offering
            .status
            .and_then(|s| s.consumers)
            .ok_or("no consumer status yet")?;
        if consumers.bound == 3 {
            Ok(consumers)
        } else {
            Err(format!("{consumers:?}"))
        }
    })
    .await
    .expect("bound");
    assert_eq!(consumers.failed, 0);
    let mut paths = consumers.workspaces.clone();
    paths.sort();
    let mut expected: Vec<String> = children
        .iter()
        .chain([&listed])
        .map(|w| w.path.clone())
        .collect();
    expected.sort();
    assert_eq!(paths, expected, "the status names every consumer");
    for workspace in children.iter().chain([&listed]) {
        let binding = Api::<APIBinding>::all(kcp.client(&workspace.path).expect("client"))
            .get("widgets")
            .await
            .unwrap_or_else(|e| panic!("binding in {}: {e}", workspace.path));
        assert_eq!(binding.status.expect("status").phase, "Bound");
    }

    // The agent from the operator's Deployment syncs the consumer on the
    // provider's shard. Its token is a bound ServiceAccount token of the
    // provider's workspace, which kcp v0.30 accepts on that shard only: the
    // other shard's endpoint is reported as refusing it (README).
    scene
        .consumer_widget(&children[0].path, "w1")
        .await
        .expect("widget");
    poll_until("the copy of w1", TIMEOUT, async || {
        match scene
            .copies_from(&children[0].cluster)
            .await
            .map_err(|e| e.to_string())?
            .len()
        {
            1 => Ok(()),
            n => Err(format!(
                "{n} copies; agent log:\n{}",
                agent.process.log_tail()
            )),
        }
    })
    .await
    .expect("copy");
    let urls = urls_of(&scene.provider.kcp_client, "widgets", shards.len()).await;
    let refusing = poll_until(
        "the agent's warning about the other shard",
        KCP_SLOW_TIMEOUT,
        async || {
            let log = agent.process.log_tail();
            log.lines()
                .filter(|line| line.contains("refuses the agent's credentials"))
                .find_map(|line| urls.iter().find(|url| line.contains(url.as_str())))
                .cloned()
                .ok_or(log)
        },
    )
    .await
    .expect("warning");

    // The operator sees the same refusal and says so on the offering: the
    // credentials are not ready, the refusing shard's endpoint is named and
    // the accepting one is not, and a Warning event tells the provider.
    let offering = scene
        .wait_for_condition("widgets", "CredentialsReady", "False", "TokenRefused")
        .await
        .expect("the refusal on the offering");
    let conditions = offering.status.expect("status").conditions;
    let credentials = conditions
        .iter()
        .find(|c| c.type_ == "CredentialsReady")
        .expect("CredentialsReady");
    assert!(
        credentials.message.starts_with(&format!(
            "1 of {} virtual workspace endpoints refuse",
            shards.len()
        )),
        "{}",
        credentials.message
    );
    assert!(
        credentials.message.contains(&refusing),
        "{}",
        credentials.message
    );
    for url in urls.iter().filter(|url| **url != refusing) {
        assert!(
            !credentials.message.contains(url.as_str()),
            "{}",
            credentials.message
        );
    }
    let ready = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "TokenRefused")
    );
    scene
        .wait_for_warning("widgets", "TokenRefused")
        .await
        .expect("a Warning event");

    scene.delete_and_wait("widgets").await.expect("deleted");
    for workspace in children.iter().chain([&listed, &parent]) {
        workspace.delete(kcp).await.expect("cleanup");
    }
    scene.provider.cleanup().await.expect("cleanup");
}

/// A kcp kubeconfig for `e2e-agent`, a global user of a static token that
/// every shard and the front proxy accept, as a platform would hand a
/// provider an identity for its agent.
fn agent_kubeconfig_every_shard_accepts(env: &EnvFile) -> String {
    let admin = fs::read_to_string(&env.kcp_kubeconfig).expect("the admin kubeconfig");
    let mut kubeconfig = kube::config::Kubeconfig::from_yaml(&admin).expect("a kubeconfig");
    for user in kubeconfig
        .auth_infos
        .iter_mut()
        .filter_map(|u| u.auth_info.as_mut())
    {
        *user = kube::config::AuthInfo {
            token: Some(env.kcp_agent_token.clone().into()),
            ..Default::default()
        };
    }
    serde_json::to_string(&kubeconfig).expect("serialised")
}

/// A consumer workspace `prefix` on every shard, and the Secret
/// `agent-kcp` of the scene's namespace with credentials every shard
/// accepts (the brought kubeconfig; its text is returned).
async fn consumers_on_every_shard_with_brought_credentials(
    scene: &OfferingScene,
    prefix: &str,
) -> (Vec<e2e::kcp::TestWorkspace>, String) {
    let mut consumers = Vec::new();
    for shard in &shards() {
        consumers.push(
            scene
                .provider
                .kcp
                .create_workspace_on("root", prefix, Some(shard))
                .await
                .expect("consumer"),
        );
    }
    let kubeconfig = agent_kubeconfig_every_shard_accepts(&scene.provider.env);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "agent-kcp"},
        "stringData": {"kubeconfig": kubeconfig},
    }))
    .unwrap();
    Api::<Secret>::namespaced(scene.provider.service.clone(), &scene.provider.namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the agent's own kcp Secret");
    (consumers, kubeconfig)
}

/// A widget `w` in each consumer workspace, and each one's copy on the
/// service cluster, through its shard's endpoint.
async fn widgets_reach_the_service_cluster(
    scene: &OfferingScene,
    consumers: &[e2e::kcp::TestWorkspace],
    agent: &e2e::pod::Pod,
) {
    for consumer in consumers {
        scene
            .consumer_widget(&consumer.path, "w")
            .await
            .expect("widget");
    }
    for consumer in consumers {
        poll_until(
            &format!("the copy from {}", consumer.path),
            KCP_SLOW_TIMEOUT,
            async || match scene
                .copies_from(&consumer.cluster)
                .await
                .map_err(|e| e.to_string())?
                .len()
            {
                1 => Ok(()),
                n => Err(format!(
                    "{n} copies; agent log:\n{}",
                    agent.process.log_tail()
                )),
            },
        )
        .await
        .expect("copy");
    }
}

#[tokio::test]
async fn an_offering_whose_agent_brings_credentials_every_shard_accepts_syncs_consumers_on_both_shards()
 {
    let shards = shards();
    let scene = OfferingScene::new("op-brought", &[]).await.expect("scene");
    let kcp = &scene.provider.kcp;
    let (consumers, kubeconfig) =
        consumers_on_every_shard_with_brought_credentials(&scene, "op-brought-consumer").await;
    let secrets: Api<Secret> =
        Api::namespaced(scene.provider.service.clone(), &scene.provider.namespace);
    let paths: Vec<String> = consumers.iter().map(|c| c.path.clone()).collect();
    scene
        .apply(
            "widgets",
            scene.spec(json!({
                "agent": {"replicas": 1, "kcpKubeconfigSecretRef": {"name": "agent-kcp"}},
                "consumers": {"workspaces": paths},
            })),
        )
        .await
        .expect("offering");
    let agent = scene.run_agent("widgets").await.expect("agent runs");

    // Every consumer, on either shard, gets its copy through its shard's
    // endpoint with the brought credentials.
    widgets_reach_the_service_cluster(&scene, &consumers, &agent).await;
    // Every endpoint accepts them: the offering is Ready and says whose
    // credentials the agent uses; no token was minted for it.
    urls_of(&scene.provider.kcp_client, "widgets", shards.len()).await;
    let offering = scene
        .wait_for_condition("widgets", "CredentialsReady", "True", "KubeconfigProvided")
        .await
        .expect("the brought credentials on the offering");
    let conditions = offering.status.expect("status").conditions;
    let credentials = conditions
        .iter()
        .find(|c| c.type_ == "CredentialsReady")
        .expect("CredentialsReady");
    assert!(
        credentials.message.contains("Secret agent-kcp")
            && credentials.message.contains("kcp user e2e-agent"),
        "{}",
        credentials.message
    );
    scene
        .wait_for_condition("widgets", "Ready", "True", "Ready")
        .await
        .expect("Ready");
    let agent_secret = secrets
        .get("widgets-kcp-kubeconfig")
        .await
        .expect("the agent's kcp Secret");
    let data = agent_secret.data.unwrap_or_default();
    assert!(!data.contains_key("token"), "nothing minted");
    let written = String::from_utf8(data["kubeconfig"].0.clone()).unwrap();
    assert!(written.contains(&scene.provider.env.kcp_agent_token));

    // A changed Secret reaches the agent: its pods roll.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(scene.provider.service.clone(), &scene.provider.namespace);
    let hash = |d: &k8s_openapi::api::apps::v1::Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("offering.syncagent.dev/kcp-kubeconfig-sha1").cloned())
    };
    let before = hash(&deployments.get("widgets-sync-agent").await.unwrap());
    let mut changed: serde_json::Value = serde_json::from_str(&kubeconfig).unwrap();
    for cluster in changed["clusters"].as_array_mut().unwrap() {
        cluster["cluster"]["tls-server-name"] = json!("localhost");
    }
    secrets
        .patch(
            "agent-kcp",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"kubeconfig": changed.to_string()}})),
        )
        .await
        .expect("the Secret changes");
    poll_until("the agent's pods to roll", KCP_SLOW_TIMEOUT, async || {
        let now = hash(
            &deployments
                .get("widgets-sync-agent")
                .await
                .map_err(|e| e.to_string())?,
        );
        if now != before {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await
    .expect("rolled");

    drop(agent);
    scene.delete_and_wait("widgets").await.expect("deleted");
    for consumer in &consumers {
        consumer.delete(kcp).await.expect("cleanup");
    }
    scene.provider.cleanup().await.expect("cleanup");
}

/// A TCP forwarder on a free loopback port to `target` (`host:port`), as a
/// load balancer or tunnel in front of a shard; returns its address and
/// when each connection it carries now was opened.
async fn forwarder(target: String) -> (String, Arc<Mutex<HashMap<u64, Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("its address").to_string();
    let open: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let carried = open.clone();
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut inbound, _)) = listener.accept().await {
            next += 1;
            let id = next;
            carried.lock().unwrap().insert(id, Instant::now());
            let (target, carried) = (target.clone(), carried.clone());
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                carried.lock().unwrap().remove(&id);
            });
        }
    });
    (address, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_rewritten_through_a_forwarder_still_syncs_and_a_wrong_rewrite_is_reported() {
    let shards = shards();
    let scene = OfferingScene::new("op-rewrite", &[]).await.expect("scene");
    let kcp = &scene.provider.kcp;
    // Credentials every shard accepts, so that both shards sync.
    let (consumers, _) =
        consumers_on_every_shard_with_brought_credentials(&scene, "op-rewrite-consumer").await;
    let paths: Vec<String> = consumers.iter().map(|c| c.path.clone()).collect();
    let spec = |agent: serde_json::Value| {
        let mut agent_spec =
            json!({"replicas": 1, "kcpKubeconfigSecretRef": {"name": "agent-kcp"}});
        agent_spec
            .as_object_mut()
            .unwrap()
            .extend(agent.as_object().cloned().unwrap_or_default());
        scene.spec(json!({"agent": agent_spec, "consumers": {"workspaces": paths}}))
    };
    scene
        .apply("widgets", spec(json!({})))
        .await
        .expect("offering");
    let urls = urls_of(&scene.provider.kcp_client, "widgets", shards.len()).await;

    // One shard's endpoint is reached through a forwarder, as a service
    // cluster reaches a shard whose listed URL is cluster-internal.
    let rewritten = &urls[1];
    let (base, _) = rewritten
        .split_once("/services/")
        .expect("a virtual workspace URL");
    let (forwarded, carried) = forwarder(base.trim_start_matches("https://").to_string()).await;
    scene
        .apply(
            "widgets",
            spec(
                json!({"endpointRewrites": [{"from": base, "to": format!("https://{forwarded}")}]}),
            ),
        )
        .await
        .expect("the rewrite");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(scene.provider.service.clone(), &scene.provider.namespace);
    poll_until("the rewrite in the agent's flags", TIMEOUT, async || {
        let deployment = deployments
            .get("widgets-sync-agent")
            .await
            .map_err(|e| e.to_string())?;
        let args = deployment
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].args.clone().unwrap_or_default())
            .unwrap_or_default();
        args.iter()
            .any(|a| a.contains(&forwarded))
            .then_some(())
            .ok_or(format!("{args:?}"))
    })
    .await
    .expect("the flag");
    let agent = scene.run_agent("widgets").await.expect("agent runs");
    widgets_reach_the_service_cluster(&scene, &consumers, &agent).await;
    // The agent's watch of that shard goes through the forwarder: a
    // connection outlives the operator's checks (5 s each).
    poll_until(
        "a long-lived connection through the forwarder",
        TIMEOUT,
        async || {
            let open = carried.lock().unwrap();
            open.values()
                .any(|since| since.elapsed() > Duration::from_secs(10))
                .then_some(())
                .ok_or(format!("{} open, none older than 10 s", open.len()))
        },
    )
    .await
    .expect("the agent reaches the rewritten endpoint through the forwarder");
    let metrics = agent.process.metrics().await.expect("metrics");
    assert!(
        metrics.contains("sync_agent_endpoints_rewritten 1"),
        "{metrics}"
    );
    scene
        .wait_for_condition("widgets", "Ready", "True", "Ready")
        .await
        .expect("Ready with the rewrite");

    // A rule pointing nowhere is named on the offering, not left to silence.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port nobody listens on");
    scene
        .apply(
            "widgets",
            spec(json!({"endpointRewrites": [{"from": base, "to": format!("https://{closed}")}]})),
        )
        .await
        .expect("a wrong rewrite");
    let offering = scene
        .wait_for_condition(
            "widgets",
            "CredentialsReady",
            "False",
            "EndpointUnreachable",
        )
        .await
        .expect("the wrong rewrite on the offering");
    let message = offering
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "CredentialsReady")
        .expect("CredentialsReady")
        .message;
    assert!(
        message.contains(&format!("{rewritten} at https://{closed}")),
        "{message}"
    );

    drop(agent);
    scene.delete_and_wait("widgets").await.expect("deleted");
    for consumer in &consumers {
        consumer.delete(kcp).await.expect("cleanup");
    }
    scene.provider.cleanup().await.expect("cleanup");
}
