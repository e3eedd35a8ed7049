//! The test environment's launcher itself: a SIGTERM while it is still
//! starting the servers stops the ones it started, instead of exiting and
//! leaving them running.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::agent::project_binary;
use e2e::poll::KCP_SLOW_TIMEOUT;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `(pid, executable)` of every server line in a `pids` file.
fn recorded(pids: &Path) -> Vec<(i32, PathBuf)> {
    fs::read_to_string(pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ' ');
            let (_, pid, exe) = (fields.next()?, fields.next()?, fields.next()?);
            Some((pid.parse().ok()?, PathBuf::from(exe)))
        })
        .collect()
}

/// Whether `pid` still runs `exe`.
fn runs(pid: i32, exe: &Path) -> bool {
    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|actual| actual == exe)
}

#[test]
fn a_sigterm_while_starting_stops_the_servers_already_started() {
    let dir = std::env::temp_dir().join(format!("testenv-sigterm-{}", std::process::id()));
    let mut launcher = Command::new(project_binary("testenv").expect("a project binary"))
        .arg("--dir")
        .arg(&dir)
        .args(["run", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("testenv starts");

    // The sentinel: all three servers are recorded and the env file, written
    // once they are ready, is not there yet.
    let deadline = Instant::now() + KCP_SLOW_TIMEOUT;
    let servers = loop {
        let servers = recorded(&dir.join("pids"));
        if servers.len() == 3 {
            break servers;
        }
        assert!(
            Instant::now() < deadline,
            "testenv never recorded its servers"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !dir.join("env").exists(),
        "the servers were ready before the signal; the test saw no start in progress"
    );

    let launcher_pid = i32::try_from(launcher.id()).expect("pid");
    kill(Pid::from_raw(launcher_pid), Signal::SIGTERM).expect("signal");
    let status = launcher.wait().expect("testenv exits");
    let deadline = Instant::now() + Duration::from_secs(60);
    let leftovers = loop {
        let running: Vec<_> = servers
            .iter()
            .filter(|(pid, exe)| runs(*pid, exe))
            .collect();
        if running.is_empty() || Instant::now() > deadline {
            break running;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (pid, _) in &leftovers {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let _ = fs::remove_dir_all(&dir);
    assert!(
        leftovers.is_empty(),
        "servers left running after the interrupted start: {leftovers:?}"
    );
    assert!(!status.success(), "an interrupted start is a failure");
}
