//! Starts and stops the end-to-end test environment: a real kcp and a real
//! kube-apiserver (with its own etcd) on loopback, on free ports, in a fresh
//! state directory. With `--sharded`, kcp runs as it is deployed at scale: a
//! root shard and a second shard, the cache server and the front proxy
//! ([`sharded`]).
//!
//! `testenv start` leaves the servers running and writes `<dir>/env`, the
//! file the tests read; `testenv stop` stops exactly the processes a start
//! recorded; `testenv run -- CMD...` starts, runs CMD with the environment
//! exported, and stops again, also when CMD fails or the run is interrupted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use e2e::env::{EnvFile, random_hex};
use tokio::signal::unix::{Signal, SignalKind, signal};

use servers::{
    Started, ec_key, free_ports, ready, record, rss_mib, spawn, stop, wait_until_ready, write_pids,
    write_service_kubeconfig,
};

mod servers;
mod sharded;

#[derive(Parser, Debug)]
#[command(about = "Runs a real kcp and kube-apiserver for the end-to-end tests")]
struct Cli {
    /// State directory: data, logs, kubeconfigs, the env file and the PID
    /// list [default: `<checkout>/.e2e-run`, the checkout found at run time].
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Where `e2e/env/build.sh` put the server binaries [default:
    /// `<checkout>/.e2e-bin`].
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Run kcp sharded: a root shard, a second shard `shard-1`, kcp's cache
    /// server and its front proxy, which the kcp kubeconfig points at.
    #[arg(long, global = true)]
    sharded: bool,
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Start the servers and leave them running.
    Start,
    /// Stop the servers a previous start left running.
    Stop,
    /// Start the servers, run a command against them, stop them.
    Run {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        let in_checkout = |dir: Option<PathBuf>, name: &str| match dir {
            Some(dir) => Ok(dir),
            None => e2e::checkout::root().map(|root| root.join(name)),
        };
        // Absolute, as the env file names it to commands run elsewhere.
        let dir = std::path::absolute(in_checkout(cli.dir, ".e2e-run")?)?;
        let bin_dir = std::path::absolute(in_checkout(cli.bin_dir, ".e2e-bin")?)?;
        // Before the first server starts: a signal that came before the
        // handlers would end this process and leave the servers running.
        let mut signals = Signals::install()?;
        match cli.command {
            Action::Start => start_or_interrupted(&dir, &bin_dir, cli.sharded, &mut signals)
                .await
                .map(|_| ExitCode::SUCCESS),
            Action::Stop => stop(&dir).map(|()| ExitCode::SUCCESS),
            Action::Run { command } => {
                run(&dir, &bin_dir, cli.sharded, &command, &mut signals).await
            }
        }
    }
    .await;
    result.unwrap_or_else(|error| {
        eprintln!("testenv: {error:#}");
        ExitCode::FAILURE
    })
}

/// Starts the servers; a SIGINT or SIGTERM while they start stops the ones
/// already running (every spawn is recorded at once) instead of leaving them.
async fn start_or_interrupted(
    dir: &Path,
    bin_dir: &Path,
    sharded: bool,
    signals: &mut Signals,
) -> anyhow::Result<EnvFile> {
    tokio::select! {
        env = start(dir, bin_dir, sharded) => env,
        signal = signals.next() => {
            stop(dir)?;
            bail!("interrupted by {signal} while starting the servers; stopped them")
        }
    }
}

async fn run(
    dir: &Path,
    bin_dir: &Path,
    sharded: bool,
    command: &[String],
    signals: &mut Signals,
) -> anyhow::Result<ExitCode> {
    let env = start_or_interrupted(dir, bin_dir, sharded, signals).await?;
    let (program, args) = command.split_first().context("no command given")?;
    let outcome = match tokio::process::Command::new(program)
        .args(args)
        .envs(env.variables())
        .env(e2e::env::ENV_FILE_VARIABLE, dir.join("env"))
        .spawn()
    {
        Ok(mut child) => {
            let outcome = tokio::select! {
                status = child.wait() => status.map_err(anyhow::Error::from),
                signal = signals.next() => Err(anyhow::anyhow!("interrupted by {signal}")),
            };
            if outcome.is_err() {
                let _ = child.kill().await;
            }
            outcome
        }
        Err(error) => Err(anyhow::Error::from(error).context(format!("starting {program}"))),
    };
    stop(dir)?;
    let status = outcome?;
    if !status.success() {
        eprintln!("testenv: server logs are in {}", env.log_dir.display());
    }
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}

/// SIGINT and SIGTERM, caught from the moment they are installed.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

async fn start(dir: &Path, bin_dir: &Path, sharded: bool) -> anyhow::Result<EnvFile> {
    let began = Instant::now();
    if dir.join("pids").exists() {
        eprintln!("testenv: stopping servers left by an earlier start");
        stop(dir)?;
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let log_dir = dir.join("logs");
    for sub in ["logs", "etcd", "kube-apiserver"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let dir = fs::canonicalize(dir)?;
    let [etcd_client, etcd_peer, kube_port] = free_ports::<3>()?;

    let mut started = Vec::new();
    let result = async {
        let binary = |name: &str| -> anyhow::Result<PathBuf> {
            let path = bin_dir.join(name);
            if !path.is_file() {
                bail!("{} is missing: run e2e/env/build.sh first", path.display());
            }
            Ok(fs::canonicalize(path)?)
        };

        // The service cluster: etcd, then kube-apiserver on top of it.
        let etcd_dir = dir.join("etcd");
        record(
            &dir,
            &mut started,
            spawn(
                "etcd",
                &binary("etcd")?,
                &[
                    "--name=e2e".into(),
                    format!("--data-dir={}", etcd_dir.join("data").display()),
                    format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                    format!("--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}"),
                    "--unsafe-no-fsync".into(),
                ],
                &log_dir,
            )?,
        )?;

        let kube_dir = dir.join("kube-apiserver");
        let admin_token = random_hex(16)?;
        fs::write(
            kube_dir.join("tokens.csv"),
            format!("{admin_token},e2e-admin,e2e-admin,system:masters\n"),
        )?;
        let sa_key = kube_dir.join("service-account.key");
        ec_key(&sa_key)?;
        let cert_dir = kube_dir.join("certs");
        record(
            &dir,
            &mut started,
            spawn(
                "kube-apiserver",
                &binary("kube-apiserver")?,
                &[
                    format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    format!("--secure-port={kube_port}"),
                    format!("--cert-dir={}", cert_dir.display()),
                    format!(
                        "--token-auth-file={}",
                        kube_dir.join("tokens.csv").display()
                    ),
                    "--authorization-mode=RBAC".into(),
                    "--service-cluster-ip-range=10.96.0.0/16".into(),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                    format!("--service-account-key-file={}", sa_key.display()),
                    format!("--service-account-signing-key-file={}", sa_key.display()),
                    "--enable-priority-and-fairness=false".into(),
                    "--profiling=false".into(),
                ],
                &log_dir,
            )?,
        )?;

        let agent_token = random_hex(16)?;
        // kcp starts while kube-apiserver does.
        let (kcp_kubeconfig, kcp_shards) = if sharded {
            let kcp = sharded::start(&dir, &binary, &mut started, &agent_token).await?;
            (kcp.kubeconfig, kcp.shards)
        } else {
            let kubeconfig = spawn_kcp(&dir, &binary, &mut started, &agent_token)?;
            (kubeconfig, vec!["root".to_string()])
        };
        let service_kubeconfig = dir.join("service.kubeconfig");
        wait_until_ready(&started, &log_dir, async || {
            // kube-apiserver writes its self-signed serving certificate on start.
            let cert = cert_dir.join("apiserver.crt");
            if !cert.exists() {
                return Err("kube-apiserver has not written its certificate yet".into());
            }
            write_service_kubeconfig(&service_kubeconfig, kube_port, &cert, &admin_token)
                .map_err(|e| e.to_string())?;
            ready(&service_kubeconfig, None).await
        })
        .await
        .context("kube-apiserver did not become ready")?;

        if !sharded {
            wait_until_ready(&started, &log_dir, async || {
                if !kcp_kubeconfig.exists() {
                    return Err("kcp has not written its admin kubeconfig yet".into());
                }
                ready(&kcp_kubeconfig, Some("base")).await
            })
            .await
            .context("kcp did not become ready")?;
        }

        let env = EnvFile {
            kcp_kubeconfig,
            service_kubeconfig,
            kcp_agent_token: agent_token,
            log_dir: log_dir.clone(),
            kcp_shards,
        };
        env.write(&dir.join("env"))?;
        Ok(env)
    }
    .await;

    match result {
        Ok(env) => {
            eprintln!(
                "testenv: kcp ({}) and kube-apiserver ready in {:.1}s; env file {}",
                env.kcp_shards.join(", "),
                began.elapsed().as_secs_f64(),
                dir.join("env").display()
            );
            for server in &started {
                if let Some(rss) = rss_mib(server.pid) {
                    eprintln!(
                        "testenv: {} (pid {}) uses {rss} MiB",
                        server.name, server.pid
                    );
                }
            }
            Ok(env)
        }
        Err(error) => {
            if !started.is_empty() {
                write_pids(&dir, &started)?;
                stop(&dir)?;
            }
            Err(error)
        }
    }
}

/// Spawns one kcp shard with its embedded etcd and a static token for a
/// non-admin user; returns where kcp writes its own admin kubeconfig.
fn spawn_kcp(
    dir: &Path,
    binary: &impl Fn(&str) -> anyhow::Result<PathBuf>,
    started: &mut Vec<Started>,
    agent_token: &str,
) -> anyhow::Result<PathBuf> {
    let kcp_dir = dir.join("kcp");
    fs::create_dir_all(&kcp_dir)?;
    let [kcp_port, kcp_etcd_client, kcp_etcd_peer] = free_ports::<3>()?;
    fs::write(
        kcp_dir.join("tokens.csv"),
        format!("{agent_token},e2e-agent,e2e-agent\n"),
    )?;
    record(
        dir,
        started,
        spawn(
            "kcp",
            &binary("kcp")?,
            &[
                "start".into(),
                format!("--root-directory={}", kcp_dir.join("root").display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcp_port}"),
                format!("--embedded-etcd-client-port={kcp_etcd_client}"),
                format!("--embedded-etcd-peer-port={kcp_etcd_peer}"),
                "--embedded-etcd-wal-size-bytes=5000".into(),
                format!("--token-auth-file={}", kcp_dir.join("tokens.csv").display()),
            ],
            &dir.join("logs"),
        )?,
    )?;
    Ok(kcp_dir.join("root").join("admin.kubeconfig"))
}
