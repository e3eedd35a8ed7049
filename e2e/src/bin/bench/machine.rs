//! The machine and tool versions a report was measured on.

use std::process::Command;

use crate::config::repo_dir;

pub(crate) fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{:.1} GiB", kib / (1024.0 * 1024.0)),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| format!("Linux {}", s.trim()));
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .current_dir(repo_dir())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let commit = run("git", &["rev-parse", "--short", "HEAD"]).map_or_else(
        || "unknown".into(),
        |c| {
            if dirty {
                format!("{c} with local changes")
            } else {
                c
            }
        },
    );
    vec![
        ("CPU".into(), model),
        ("cores".into(), cores.to_string()),
        ("memory".into(), memory),
        ("kernel".into(), kernel),
        (
            "kcp".into(),
            go_module_version("e2e/env/kcp/go.mod", "github.com/kcp-dev/kcp"),
        ),
        (
            "kube-apiserver".into(),
            go_module_version("e2e/env/kube-apiserver/go.mod", "k8s.io/kubernetes"),
        ),
        (
            "etcd".into(),
            go_module_version("e2e/env/kube-apiserver/go.mod", "go.etcd.io/etcd/server/v3"),
        ),
        (
            "rustc".into(),
            run("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
        ),
        ("commit".into(), commit),
        (
            "date".into(),
            k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
        ),
    ]
}

/// The version a go.mod requires of a module.
pub(crate) fn go_module_version(file: &str, module: &str) -> String {
    std::fs::read_to_string(repo_dir().join(file))
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(module)).then(|| words.next().map(str::to_string))?
        })
        .map_or_else(|| "unknown".into(), |v| format!("{v} (`{file}`)"))
}
