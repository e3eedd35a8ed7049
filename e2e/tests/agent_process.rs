//! The agent as a process: `/readyz` turns ready only once the controllers'
//! caches have listed the PublishedResources, and a standby replica is
//! ready while it waits for the Lease.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::agent::{AgentProcess, free_address, http_get, project_binary, write_kcp_kubeconfig};
use e2e::poll::poll_until;
use e2e::publishing::Provider;
use e2e::service::post_params;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams};
use kube::config::Kubeconfig;
use serde_json::json;

/// Waits on the agent: its watches back off up to half a minute.
const TIMEOUT: Duration = Duration::from_secs(120);

/// A child process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kubeconfig of the service cluster that authenticates as service
/// account `name` in `namespace`, written next to the logs.
async fn service_account_kubeconfig(
    provider: &Provider,
    name: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let accounts: Api<ServiceAccount> =
        Api::namespaced(provider.service.clone(), &provider.namespace);
    let account = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    accounts.create(&post_params(), &account).await?;
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    let token = accounts
        .create_token_request(name, &post_params(), &request)
        .await?
        .status
        .map(|s| s.token)
        .unwrap_or_default();
    let mut kubeconfig = Kubeconfig::read_from(&provider.env.service_kubeconfig)?;
    kubeconfig.auth_infos = vec![serde_json::from_value(
        json!({"name": name, "user": {"token": token}}),
    )?];
    for context in kubeconfig
        .contexts
        .iter_mut()
        .filter_map(|c| c.context.as_mut())
    {
        context.user = Some(name.to_string());
    }
    let path = provider
        .env
        .log_dir
        .join(format!("{name}.service.kubeconfig"));
    std::fs::write(&path, serde_saphyr::to_string(&kubeconfig)?)?;
    Ok(path)
}

#[tokio::test]
async fn readyz_waits_until_the_published_resources_are_listed() {
    let provider = Provider::new("ready").await.expect("provider");
    let account = format!("{}-agent", provider.agent_name);
    // The agent may read nothing on the service cluster at first: its
    // watches of PublishedResources fail until access is granted below.
    let kubeconfig = service_account_kubeconfig(&provider, &account)
        .await
        .expect("service account kubeconfig");
    let settings = provider.agent_settings();
    let kcp_kubeconfig =
        write_kcp_kubeconfig(&provider.env, &settings.workspace, &settings.name).expect("kcp");
    let health = free_address().expect("address");
    let log = provider
        .env
        .log_dir
        .join(format!("agent-{}-ready.log", settings.name));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(project_binary("sync-agent").expect("a project binary"))
        .args([
            format!("--kcp-kubeconfig={}", kcp_kubeconfig.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--namespace={}", settings.namespace),
            format!("--agent-name={}", settings.name),
            format!("--apiexportendpointslice-ref={}", settings.endpoint_slice),
            format!("--published-resource-selector={}", settings.selector),
            format!("--health-address={health}"),
            "--metrics-address=".into(),
            "--log-format=text".into(),
        ])
        .env("RUST_LOG", &settings.log_filter)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("the agent starts (build it with cargo build)");
    let _agent = Running(child);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Sentinel: the agent found its export (where readiness used to turn
    // on) and its watch of PublishedResources has been refused since.
    poll_until(
        "the agent to be refused the PublishedResources",
        TIMEOUT,
        async || {
            let text = log_text();
            let refused = text.contains("publishedresources") && text.contains("forbidden");
            if text.contains("Found the APIExport") && refused {
                Ok(())
            } else {
                Err(text.lines().last().unwrap_or_default().to_string())
            }
        },
    )
    .await
    .expect("refused");
    let readyz = format!("http://{health}/readyz");
    assert_eq!(
        http_get(&readyz).await,
        Err("503 Service Unavailable".to_string()),
        "not ready before the caches synced; log: {}",
        log_text()
    );

    let role_name = format!("{account}-publishedresources");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": role_name},
        "rules": [{"apiGroups": ["syncagent.kcp.io"], "resources": ["publishedresources"],
                   "verbs": ["get", "list", "watch"]}],
    }))
    .expect("role");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": role_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": provider.namespace}],
    }))
    .expect("binding");
    let roles: Api<ClusterRole> = Api::all(provider.service.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(provider.service.clone());
    roles.create(&post_params(), &role).await.expect("role");
    bindings
        .create(&post_params(), &binding)
        .await
        .expect("binding");

    let ready = poll_until("the agent to be ready", TIMEOUT, async || {
        http_get(&readyz).await
    })
    .await;
    let _ = bindings.delete(&role_name, &DeleteParams::default()).await;
    let _ = roles.delete(&role_name, &DeleteParams::default()).await;
    ready.unwrap_or_else(|e| panic!("ready once listed: {e:#}; log: {}", log_text()));
}

#[tokio::test]
async fn a_standby_replica_is_ready_while_another_leads() {
    let provider = Provider::new("standby").await.expect("provider");
    let mut settings = provider.agent_settings();
    settings.extra_args.push("--enable-leader-election".into());
    let first = AgentProcess::start(&provider.env, &settings)
        .await
        .expect("the first replica is ready");
    let second = AgentProcess::start(&provider.env, &settings)
        .await
        .expect("the second replica is ready");
    let leads = |agent: &AgentProcess| {
        std::fs::read_to_string(&agent.log).is_ok_and(|l| l.contains("Became the leader"))
    };
    poll_until("one replica to lead", TIMEOUT, async || {
        if leads(&first) || leads(&second) {
            Ok(())
        } else {
            Err("no leader yet".to_string())
        }
    })
    .await
    .expect("a leader");
    // The Lease has one holder: the other replica is the standby.
    for agent in [&first, &second] {
        let readyz = format!("http://{}/readyz", agent.health_address);
        poll_until("both replicas to be ready", TIMEOUT, async || {
            http_get(&readyz).await
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}; log: {}", agent.log_tail()));
    }
}
