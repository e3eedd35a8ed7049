//! Runs a Deployment's pod as a local process, the way a kubelet would as
//! far as the operator's tests need: the container's command, args and env,
//! its Secret volumes kept in sync (so rotated Secrets reach the process),
//! and the ServiceAccount's credentials for the service cluster. Once the
//! process is ready, the Deployment's status reports it available.
//!
//! `$(VAR)` in args expands to the container's env, as a kubelet does.
//! What differs from a kubelet: the pod's ports are remapped to free
//! loopback ports, mount paths to a directory of the test, the in-cluster
//! configuration to a `--kubeconfig` holding a token of the pod's
//! ServiceAccount, and the image's binary to the one built in `target/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, Kubeconfig};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::agent::{AgentProcess, Launch, free_address, project_binary};
use crate::env::{EnvFile, random_hex};
use crate::poll::poll_until;

/// A Deployment's pod, running locally; stopped when dropped.
#[derive(Debug)]
pub struct Pod {
    /// The container's process.
    pub process: AgentProcess,
    /// Where the pod's volumes live, by mount path.
    pub mounts: BTreeMap<String, PathBuf>,
    volume_sync: Vec<JoinHandle<()>>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        for task in &self.volume_sync {
            task.abort();
        }
    }
}

/// Writes the Secret's keys as files into `dir`, replacing changed ones
/// atomically; returns whether the Secret exists.
async fn sync_secret(secrets: &Api<Secret>, name: &str, dir: &Path) -> anyhow::Result<bool> {
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(false);
    };
    std::fs::create_dir_all(dir)?;
    for (key, value) in secret.data.unwrap_or_default() {
        let path = dir.join(&key);
        if std::fs::read(&path).ok().as_deref() == Some(value.0.as_slice()) {
            continue;
        }
        let staging = dir.join(format!("..{key}.tmp"));
        std::fs::write(&staging, &value.0)?;
        std::fs::rename(&staging, &path)?;
    }
    Ok(true)
}

/// A kubeconfig for the service cluster with a token of `account`.
async fn service_account_kubeconfig(
    env: &EnvFile,
    client: &Client,
    namespace: &str,
    account: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = poll_until(
        &format!("a token for ServiceAccount {namespace}/{account}"),
        Duration::from_secs(30),
        async || {
            accounts
                .create_token_request(account, &PostParams::default(), &request)
                .await
                .map_err(|e| e.to_string())?
                .status
                .and_then(|s| s.token)
                .ok_or_else(|| "no token".to_string())
        },
    )
    .await?;
    let mut kubeconfig = Kubeconfig::read_from(&env.service_kubeconfig)?;
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    std::fs::write(path, serde_saphyr::to_string(&kubeconfig)?)?;
    Ok(())
}

impl Pod {
    /// A process started without a Deployment, held like a pod.
    pub fn from_process(process: AgentProcess) -> Self {
        Self {
            process,
            mounts: BTreeMap::new(),
            volume_sync: Vec::new(),
        }
    }

    /// Runs the first container of Deployment `namespace/name` and marks
    /// the Deployment available once the process is ready.
    pub async fn run(
        env: &EnvFile,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Self> {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let deployment = deployments
            .get(name)
            .await
            .context("reading the Deployment")?;
        let pod = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .context("the Deployment has no pod spec")?;
        let container = pod
            .containers
            .first()
            .context("the pod has no container")?
            .clone();
        let pod_name = format!("{name}-{}", random_hex(3)?);
        let root = env.log_dir.join(format!("pod-{namespace}-{pod_name}"));
        std::fs::create_dir_all(&root)?;

        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut mounts = BTreeMap::new();
        let mut volume_sync = Vec::new();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .with_context(|| format!("no volume named {}", mount.name))?;
            let Some(secret) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) else {
                bail!(
                    "volume {} is not a Secret volume; the pod runner only mounts Secrets",
                    volume.name
                );
            };
            let dir = root.join(mount.mount_path.trim_start_matches('/'));
            poll_until(
                &format!("Secret {namespace}/{secret} for volume {}", volume.name),
                Duration::from_secs(30),
                async || match sync_secret(&secrets, &secret, &dir).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("not found".to_string()),
                    Err(error) => Err(error.to_string()),
                },
            )
            .await?;
            let (secrets, dir_copy) = (secrets.clone(), dir.clone());
            volume_sync.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = sync_secret(&secrets, &secret, &dir_copy).await;
                }
            }));
            mounts.insert(mount.mount_path.clone(), dir);
        }

        let account = pod
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let service_kubeconfig = root.join("service.kubeconfig");
        service_account_kubeconfig(env, client, namespace, &account, &service_kubeconfig).await?;

        let mut environment = Vec::new();
        for variable in container.env.clone().unwrap_or_default() {
            let field = variable
                .value_from
                .as_ref()
                .and_then(|from| from.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            let value = match (variable.value, field) {
                (Some(value), _) => value,
                (None, Some("metadata.name")) => pod_name.clone(),
                (None, Some("metadata.namespace")) => namespace.to_string(),
                _ => bail!(
                    "env {} has a source the pod runner does not know",
                    variable.name
                ),
            };
            environment.push((variable.name, value));
        }
        let metrics_address = free_address()?;
        let health_address = free_address()?;
        let mut args: Vec<String> = container
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|arg| {
                if arg.starts_with("--metrics-address=") {
                    return format!("--metrics-address={metrics_address}");
                }
                if arg.starts_with("--health-address=") {
                    return format!("--health-address={health_address}");
                }
                let arg = environment.iter().fold(arg, |arg, (name, value)| {
                    arg.replace(&format!("$({name})"), value)
                });
                mounts.iter().fold(arg, |arg, (path, dir)| {
                    arg.replace(path.as_str(), &dir.display().to_string())
                })
            })
            .collect();
        args.push(format!("--kubeconfig={}", service_kubeconfig.display()));
        let command = container.command.clone().unwrap_or_default();
        let binary_name = command
            .first()
            .and_then(|c| Path::new(c).file_name())
            .and_then(|n| n.to_str())
            .context("the container has no command")?;
        let process = AgentProcess::launch(Launch {
            binary: project_binary(binary_name)?,
            args,
            env: environment,
            log: env.log_dir.join(format!("pod-{namespace}-{pod_name}.log")),
            metrics_address,
            health_address,
        })
        .await?;

        let replicas = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        deployments
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "observedGeneration": deployment.metadata.generation,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": 1,
                    "availableReplicas": 1,
                }})),
            )
            .await
            .context("marking the Deployment available")?;
        Ok(Self {
            process,
            mounts,
            volume_sync,
        })
    }
}

/// Plays a Deployment's ReplicaSet and kubelet for the process `pid`, which
/// stands in for its one pod: the Deployment reports the pod available, and
/// once it is scaled to zero (or deleted) the process gets SIGTERM (SIGKILL
/// 30 s later, as a kubelet's grace period ends) and, when
/// it has exited, the Deployment reports no replica, so that
/// `kubectl rollout status` returns. The process stays its owner's; the
/// returned task ends once the process is stopped.
pub fn follow_scale(client: Client, namespace: &str, name: &str, pid: u32) -> JoinHandle<()> {
    let deployments: Api<Deployment> = Api::namespaced(client, namespace);
    let name = name.to_string();
    tokio::spawn(async move {
        let mut reported = None;
        let mut seen = false;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let deployment = match deployments.get_opt(&name).await {
                Ok(found) => found,
                Err(_) => continue,
            };
            // Not there yet: nothing to follow.
            if deployment.is_none() && !seen {
                continue;
            }
            seen = true;
            let replicas = deployment
                .as_ref()
                .and_then(|d| d.spec.as_ref()?.replicas)
                .unwrap_or(0);
            let generation = deployment.as_ref().and_then(|d| d.metadata.generation);
            if replicas > 0 {
                if reported != generation {
                    let status = json!({"status": {
                        "observedGeneration": generation, "replicas": 1, "updatedReplicas": 1,
                        "readyReplicas": 1, "availableReplicas": 1,
                    }});
                    if deployments
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                        .await
                        .is_ok()
                    {
                        reported = generation;
                    }
                }
                continue;
            }
            let Ok(raw) = i32::try_from(pid) else { return };
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(raw),
                nix::sys::signal::Signal::SIGTERM,
            );
            // A kubelet kills what outlives the grace period.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !exited(pid) {
                if tokio::time::Instant::now() > deadline {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(raw),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if deployment.is_some() {
                let status = json!({"status": {
                    "observedGeneration": generation, "replicas": 0, "updatedReplicas": 0,
                    "readyReplicas": 0, "availableReplicas": 0,
                }});
                let _ = deployments
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await;
            }
            return;
        }
    })
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not
/// waited for).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| matches!(state, "Z" | "X")),
        Err(_) => true,
    }
}
