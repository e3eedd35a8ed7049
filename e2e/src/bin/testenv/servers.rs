//! The launcher's processes: spawning each server with its own log,
//! recording it at once so an interrupted start can stop it, waiting until
//! it answers, and stopping exactly what was recorded.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the servers get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// One started server process, as recorded in `<dir>/pids`.
#[derive(Debug)]
pub struct Started {
    pub name: String,
    pub pid: i32,
    pub exe: PathBuf,
}

/// Reserves `N` distinct free loopback ports. They are released together just
/// before the servers bind them.
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
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
pub fn spawn(name: &str, exe: &Path, args: &[String], log_dir: &Path) -> anyhow::Result<Started> {
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

pub fn run_quietly(command: &mut Command) -> anyhow::Result<()> {
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

/// Writes a new P-256 private key to `path` with openssl.
pub fn ec_key(path: &Path) -> anyhow::Result<()> {
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
            .arg(path),
    )
}

/// Adds a just-spawned server to `started` and to `<dir>/pids` at once, so
/// an interrupted start can stop it.
pub fn record(dir: &Path, started: &mut Vec<Started>, server: Started) -> anyhow::Result<()> {
    started.push(server);
    write_pids(dir, started)
}

pub fn write_pids(dir: &Path, started: &[Started]) -> anyhow::Result<()> {
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
pub fn stop(dir: &Path) -> anyhow::Result<()> {
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

pub fn rss_mib(pid: i32) -> Option<u64> {
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
pub async fn wait_until_ready(
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
pub async fn ready(kubeconfig: &Path, context: Option<&str>) -> Result<(), String> {
    get(kubeconfig, context, "/readyz").await.map(drop)
}

/// GETs `path` from the server behind a kubeconfig; the body, or why not.
pub async fn get(kubeconfig: &Path, context: Option<&str>, path: &str) -> Result<String, String> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client
        .request_text(request)
        .await
        .map_err(|e| e.to_string())
}

pub fn write_service_kubeconfig(
    path: &Path,
    port: u16,
    ca: &Path,
    token: &str,
) -> anyhow::Result<()> {
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
