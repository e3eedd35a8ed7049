//! Starts and stops the end-to-end test environment: a real kcp and a real
//! kube-apiserver (with its own etcd) on loopback, on free ports, in a fresh
//! state directory.
//!
//! `testenv start` leaves the servers running and writes `<dir>/env`, the
//! file the tests read; `testenv stop` stops exactly the processes a start
//! recorded; `testenv run -- CMD...` starts, runs CMD with the environment
//! exported, and stops again, also when CMD fails or the run is interrupted.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use e2e::env::{EnvFile, random_hex};
use kube::config::{KubeConfigOptions, Kubeconfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the servers get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

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
        let dir = in_checkout(cli.dir, ".e2e-run")?;
        let bin_dir = in_checkout(cli.bin_dir, ".e2e-bin")?;
        match cli.command {
            Action::Start => start_or_interrupted(&dir, &bin_dir)
                .await
                .map(|_| ExitCode::SUCCESS),
            Action::Stop => stop(&dir).map(|()| ExitCode::SUCCESS),
            Action::Run { command } => run(&dir, &bin_dir, &command).await,
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
async fn start_or_interrupted(dir: &Path, bin_dir: &Path) -> anyhow::Result<EnvFile> {
    tokio::select! {
        env = start(dir, bin_dir) => env,
        signal = interrupted() => {
            stop(dir)?;
            bail!("interrupted by {signal} while starting the servers; stopped them")
        }
    }
}

async fn run(dir: &Path, bin_dir: &Path, command: &[String]) -> anyhow::Result<ExitCode> {
    let env = start_or_interrupted(dir, bin_dir).await?;
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
                signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
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

/// Resolves on the first SIGINT or SIGTERM.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// One started server process, as recorded in `<dir>/pids`.
#[derive(Debug)]
struct Started {
    name: String,
    pid: i32,
    exe: PathBuf,
}

async fn start(dir: &Path, bin_dir: &Path) -> anyhow::Result<EnvFile> {
    let began = Instant::now();
    if dir.join("pids").exists() {
        eprintln!("testenv: stopping servers left by an earlier start");
        stop(dir)?;
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let log_dir = dir.join("logs");
    for sub in ["logs", "kcp", "etcd", "kube-apiserver"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let dir = fs::canonicalize(dir)?;
    let [
        kcp_port,
        kcp_etcd_client,
        kcp_etcd_peer,
        etcd_client,
        etcd_peer,
        kube_port,
    ] = free_ports::<6>()?;

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
        run_quietly(
            Command::new("openssl")
                .args([
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                ])
                .arg(&sa_key),
        )?;
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

        // kcp, with its embedded etcd and a static token for a non-admin user.
        let kcp_dir = dir.join("kcp");
        let agent_token = random_hex(16)?;
        fs::write(
            kcp_dir.join("tokens.csv"),
            format!("{agent_token},e2e-agent,e2e-agent\n"),
        )?;
        record(
            &dir,
            &mut started,
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
                &log_dir,
            )?,
        )?;

        let service_kubeconfig = dir.join("service.kubeconfig");
        let kcp_kubeconfig = kcp_dir.join("root").join("admin.kubeconfig");
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
        wait_until_ready(&started, &log_dir, async || {
            if !kcp_kubeconfig.exists() {
                return Err("kcp has not written its admin kubeconfig yet".into());
            }
            ready(&kcp_kubeconfig, Some("base")).await
        })
        .await
        .context("kcp did not become ready")?;

        let env = EnvFile {
            kcp_kubeconfig,
            service_kubeconfig,
            kcp_agent_token: agent_token,
            log_dir: log_dir.clone(),
        };
        env.write(&dir.join("env"))?;
        Ok(env)
    }
    .await;

    match result {
        Ok(env) => {
            eprintln!(
                "testenv: kcp and kube-apiserver ready in {:.1}s; env file {}",
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

/// Reserves `N` distinct free loopback ports. They are released together just
/// before the servers bind them.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?;
    ports
        .try_into()
        .map_err(|_| anyhow::anyhow!("could not reserve {N} ports"))
}

/// Starts a server in its own process group (so a Ctrl-C in the terminal
/// reaches only this launcher, which then stops it) with output to a log file.
fn spawn(name: &str, exe: &Path, args: &[String], log_dir: &Path) -> anyhow::Result<Started> {
    use std::os::unix::process::CommandExt;
    let log = fs::File::create(log_dir.join(format!("{name}.log")))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(Started {
        name: name.to_string(),
        pid: i32::try_from(child.id())?,
        exe: exe.to_path_buf(),
    })
}

fn run_quietly(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Adds a just-spawned server to `started` and to `<dir>/pids` at once, so
/// an interrupted start can stop it.
fn record(dir: &Path, started: &mut Vec<Started>, server: Started) -> anyhow::Result<()> {
    started.push(server);
    write_pids(dir, started)
}

fn write_pids(dir: &Path, started: &[Started]) -> anyhow::Result<()> {
    let lines: String = started
        .iter()
        .map(|s| format!("{} {} {}\n", s.name, s.pid, s.exe.display()))
        .collect();
    Ok(fs::write(dir.join("pids"), lines)?)
}

/// Stops the processes listed in `<dir>/pids`, last started first (so
/// kube-apiserver goes before the etcd it depends on): SIGTERM, then SIGKILL
/// after a grace period. A PID whose executable is no longer the recorded one
/// belongs to someone else now and is left alone.
fn stop(dir: &Path) -> anyhow::Result<()> {
    let pids_file = dir.join("pids");
    let Ok(content) = fs::read_to_string(&pids_file) else {
        return Ok(());
    };
    for line in content.lines().rev() {
        let mut fields = line.splitn(3, ' ');
        let (Some(name), Some(pid), Some(exe)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (pid, exe) = (Pid::from_raw(pid.parse()?), Path::new(exe));
        if !is_our_process(pid, exe) {
            continue;
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while is_our_process(pid, exe) {
            if Instant::now() > deadline {
                eprintln!("testenv: {name} (pid {pid}) ignored SIGTERM; killing it");
                let _ = kill(pid, Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fs::remove_file(&pids_file)?;
    Ok(())
}

/// Whether `pid` is alive and still runs `exe` (zombies count as gone).
fn is_our_process(pid: Pid, exe: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let alive = fs::read_to_string(proc_dir.join("stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false);
    alive && fs::read_link(proc_dir.join("exe")).is_ok_and(|actual| actual == exe)
}

fn rss_mib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Polls `check` until it succeeds, failing early when a server exits and
/// printing the last answer and the logs' tails on timeout.
async fn wait_until_ready(
    started: &[Started],
    log_dir: &Path,
    check: impl AsyncFn() -> Result<(), String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match check().await {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if let Some(dead) = started
            .iter()
            .find(|s| !is_our_process(Pid::from_raw(s.pid), &s.exe))
        {
            bail!(
                "{} exited; its log ends with:\n{}",
                dead.name,
                log_tail(log_dir, &dead.name)
            );
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = started
                .iter()
                .map(|s| format!("--- {}:\n{}", s.name, log_tail(log_dir, &s.name)))
                .collect();
            bail!("timed out; last answer: {last}\n{}", tails.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn log_tail(log_dir: &Path, name: &str) -> String {
    let log = fs::read_to_string(log_dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Asks the server behind a kubeconfig for `/readyz`.
async fn ready(kubeconfig: &Path, context: Option<&str>) -> Result<(), String> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client
        .request_text(request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn write_service_kubeconfig(path: &Path, port: u16, ca: &Path, token: &str) -> anyhow::Result<()> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "service", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority": ca,
        }}],
        "users": [{"name": "e2e-admin", "user": {"token": token}}],
        "contexts": [{"name": "service", "context": {"cluster": "service", "user": "e2e-admin"}}],
        "current-context": "service",
    });
    fs::write(path, serde_saphyr::to_string(&kubeconfig)?)?;
    Ok(())
}
