//! The project's benchmark (issue 9, DESIGN.md §6), run by `e2e/bench.sh`
//! inside `testenv run`: initial sync, status back to kcp, latency, deletion
//! and the agent's memory and CPU, on the real test servers, against a
//! ceiling: a minimal client doing the writes the agent must do, with the
//! agent's concurrency. It prints a Markdown report and writes it to
//! `BENCHMARKS.md`.
//!
//! Every run of every scenario sets up its own provider, `Widget` kind,
//! agent and consumer workspaces with the e2e library's `Scene`, and removes
//! them afterwards. Each figure is the median over `--runs` runs.

mod ceiling;
mod config;
mod machine;
mod operator;
mod probe;
mod report;
mod scenarios;
mod stage;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use e2e::agent::{AGENT_BINARY_VARIABLE, OPERATOR_BINARY_VARIABLE};
use e2e::env::{ENV_FILE_VARIABLE, EnvFile};

use crate::ceiling::ceiling_run;
use crate::config::{Cli, Scenario, repo_dir};
use crate::operator::operator_run;
use crate::probe::Probe;
use crate::report::{Results, report};
use crate::scenarios::{deletion_run, initial_run, latency_run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let env_file = std::env::var_os(ENV_FILE_VARIABLE)
        .map_or_else(|| repo_dir().join(".e2e-run/env"), PathBuf::from);
    let env = EnvFile::load()?;
    // `testenv run` exports the servers it started; make sure they are the
    // ones the e2e library will use.
    if let Some(kubeconfig) = std::env::var_os("KCP_KUBECONFIG")
        && env.kcp_kubeconfig.as_os_str() != kubeconfig
    {
        bail!(
            "{ENV_FILE_VARIABLE} names other servers than KCP_KUBECONFIG; run the benchmark through e2e/bench.sh"
        );
    }
    for (variable, binary) in [
        (AGENT_BINARY_VARIABLE, "agent"),
        (OPERATOR_BINARY_VARIABLE, "operator"),
    ] {
        if std::env::var_os(variable).is_none() {
            eprintln!("bench: {variable} is not set; benchmarking the debug build of the {binary}");
        }
    }
    let mut probe = Probe::new(&env, &env_file).await?;
    eprintln!("bench: measuring the idle servers' CPU use");
    probe.measure_background().await;
    let runs = |s: Scenario| cli.scenarios.contains(&s);
    let per_size = |s: Scenario| vec![Vec::new(); if runs(s) { cli.sizes.len() } else { 0 }];
    let mut results = Results {
        initial: per_size(Scenario::Initial),
        ceiling: per_size(Scenario::Ceiling),
        ceiling_events: per_size(Scenario::CeilingEvents),
        ..Default::default()
    };
    let began = Instant::now();
    // The report is rewritten after every run, so a run that fails or is
    // stopped hours into a benchmark keeps the figures of those before it.
    // Until the last run, it says so at the top; it is written beside the
    // output and renamed over it, so a reader never sees half a report.
    let save_report = |results: &Results, done: bool| -> anyhow::Result<String> {
        let mut report = report(&cli, results, &probe.background);
        if !done {
            report.insert_str(
                0,
                "> **In progress**: this report is rewritten after every run; \
                 the runs after the last figures are still to come.\n\n",
            );
        }
        let partial = cli.output.with_extension("md.partial");
        std::fs::write(&partial, &report)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &cli.output)
            .with_context(|| format!("replacing {}", cli.output.display()))?;
        Ok(report)
    };
    let save = |results: &Results| save_report(results, false);
    for run in 1..=cli.runs {
        for (i, size) in cli.sizes.iter().enumerate() {
            if runs(Scenario::Initial) {
                eprintln!("bench: run {run}/{}: initial sync {size}", cli.runs);
                results.initial[i].push(initial_run(&cli, &probe, *size).await?);
                save(&results)?;
            }
            if runs(Scenario::Ceiling) {
                eprintln!("bench: run {run}/{}: ceiling {size}", cli.runs);
                results.ceiling[i].push(ceiling_run(&cli, &probe, *size, false).await?);
                save(&results)?;
            }
            if runs(Scenario::CeilingEvents) {
                eprintln!("bench: run {run}/{}: ceiling with events {size}", cli.runs);
                results.ceiling_events[i].push(ceiling_run(&cli, &probe, *size, true).await?);
                save(&results)?;
            }
        }
        if runs(Scenario::Latency) {
            eprintln!(
                "bench: run {run}/{}: latency, {} samples",
                cli.runs, cli.latency_samples
            );
            results
                .latency
                .push(latency_run(&cli, cli.latency_samples).await?);
            save(&results)?;
        }
        if runs(Scenario::Deletion) {
            eprintln!("bench: run {run}/{}: deletion {}", cli.runs, cli.deletion);
            results
                .deletion
                .push(deletion_run(&cli, &probe, cli.deletion).await?);
            save(&results)?;
        }
        if runs(Scenario::Operator) {
            eprintln!(
                "bench: run {run}/{}: operator, {} consumer workspaces",
                cli.runs, cli.operator_workspaces
            );
            results
                .operator
                .push(operator_run(&probe, cli.operator_workspaces, cli.setup_concurrency).await?);
            save(&results)?;
        }
    }
    eprintln!("bench: done in {:.0} s", began.elapsed().as_secs_f64());
    print!("{}", save_report(&results, true)?);
    eprintln!("bench: wrote {}", cli.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use crate::config::{Figures, Size, median, percentile};
    use crate::probe::{Snapshot, costs};

    #[test]
    fn sizes_parse() {
        assert_eq!(
            "10x100".parse::<Size>(),
            Ok(Size {
                workspaces: 10,
                objects: 100
            })
        );
        assert!("10".parse::<Size>().is_err());
        assert!("0x5".parse::<Size>().is_err());
    }

    #[test]
    fn medians_and_percentiles() {
        let runs: Vec<Figures> = [3.0, 1.0, 2.0]
            .iter()
            .map(|v| Figures::from([("x".to_string(), *v)]))
            .collect();
        assert_eq!(median(&runs)["x"], 2.0);
        assert_eq!(median(&runs[..2])["x"], 2.0);
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 100.0);
        assert_eq!(percentile(&samples, 99.0), 198.0);
    }

    #[test]
    fn request_costs_are_per_object() {
        let start = Instant::now();
        let before = Snapshot {
            at: start,
            cpu: BTreeMap::from([("kcp".into(), 1.0)]),
            requests: BTreeMap::from([("kcp PATCH widgets".into(), 10.0)]),
        };
        let after = Snapshot {
            at: start + Duration::from_secs(10),
            cpu: BTreeMap::from([("kcp".into(), 3.0)]),
            requests: BTreeMap::from([
                ("kcp PATCH widgets".into(), 30.0),
                ("service POST widgets".into(), 10.0),
            ]),
        };
        let f = costs(
            "sync",
            &before,
            &after,
            10,
            &BTreeMap::from([("kcp".into(), 0.1)]),
        );
        assert_eq!(
            f["sync.cpu_ms.kcp"], 100.0,
            "2 s minus 10 s at 0.1 s/s, per object"
        );
        assert_eq!(f["sync.req.kcp PATCH widgets"], 2.0);
        assert_eq!(f["sync.req_total.kcp"], 2.0);
        assert_eq!(f["sync.req_total.service"], 1.0);
    }
}
