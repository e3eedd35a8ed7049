//! The Markdown report written to `BENCHMARKS.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use clap::ValueEnum;
use e2e::agent::project_binary;

use crate::config::{
    AFTER_DELETION_WAIT, AGENT_LOG_FILTER, BACKGROUND_WINDOW, Cli, DEFAULT_LATENCY_SAMPLES,
    DEFAULT_RUNS, DEFAULT_SIZES, Figures, SETTLE_QUIET, STEADY_WINDOW, Scenario, Size, median,
    repo_dir,
};
use crate::machine::machine;

// ---------------------------------------------------------------------------
// The report

#[derive(Debug, Default)]
pub(crate) struct Results {
    /// Per size (in `--sizes` order), the agent's runs.
    pub(crate) initial: Vec<Vec<Figures>>,
    /// Per size, the minimal client's runs.
    pub(crate) ceiling: Vec<Vec<Figures>>,
    /// Per size, the minimal client's runs with the agent's events.
    pub(crate) ceiling_events: Vec<Vec<Figures>>,
    pub(crate) latency: Vec<Figures>,
    pub(crate) deletion: Vec<Figures>,
    pub(crate) operator: Vec<Figures>,
}

pub(crate) fn value(f: &Figures, key: &str) -> Option<f64> {
    f.get(key).copied().filter(|v| v.is_finite())
}

pub(crate) fn fmt(v: Option<f64>, decimals: usize) -> String {
    // `+ 0.0` turns -0.0 into 0.0.
    v.map_or_else(|| "–".into(), |v| format!("{:.decimals$}", v + 0.0))
}

pub(crate) fn mib(v: Option<f64>) -> String {
    fmt(v.map(|b| b / (1024.0 * 1024.0)), 1)
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

pub(crate) fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| "---|").collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push('\n');
}

/// Facts about the machine and the versions, as `(what, value)`.
pub(crate) fn is_full_scale(cli: &Cli) -> bool {
    let default_sizes: Vec<Size> = DEFAULT_SIZES
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    cli.runs >= DEFAULT_RUNS
        && cli.sizes == default_sizes
        && cli.latency_samples >= DEFAULT_LATENCY_SAMPLES
        && cli.deletion.total() >= 1000
        && cli.scenarios.len() == Scenario::value_variants().len()
}

/// The project binary `name` the benchmark runs, as the report shows it
/// (relative to the checkout).
fn shown_binary(name: &str) -> String {
    project_binary(name).map_or_else(
        |_| format!("target/debug/{name}"),
        |path| {
            path.strip_prefix(repo_dir())
                .unwrap_or(&path)
                .display()
                .to_string()
        },
    )
}

pub(crate) fn report(cli: &Cli, results: &Results, background: &BTreeMap<String, f64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    if !is_full_scale(cli) {
        let _ = writeln!(
            out,
            "> **Partial run.** Fewer scenarios, sizes, samples or runs than the \
             benchmark's defaults (issue 9), as the command below says; the figures \
             stand only for what it ran. `e2e/bench.sh` without arguments runs them all.\n"
        );
    }
    let command = if cli.command.is_empty() {
        "target/release/bench (without e2e/bench.sh)".to_string()
    } else {
        cli.command.clone()
    };
    let _ = writeln!(out, "Command: `{command}`\n");
    table(
        &mut out,
        &["", ""],
        &machine()
            .into_iter()
            .map(|(k, v)| vec![k, v])
            .collect::<Vec<_>>(),
    );
    let agent_binary = shown_binary("sync-agent");
    let operator_binary = shown_binary("offering-operator");
    let _ = writeln!(
        out,
        "Every figure is the median of {} run(s); every run sets up its own provider, \
         agent and consumer workspaces on the same servers (one `testenv` start for the \
         whole benchmark) and removes them afterwards. The agent is `{agent_binary}` with \
         `e2e::agent::AgentProcess`'s flags and `RUST_LOG={AGENT_LOG_FILTER}` in every \
         scenario; one PublishedResource (`Widget`, default naming), objects \
         `{{\"spec\": {{\"color\": \"blue\"}}}}`. Sizes are W workspaces × N objects per \
         workspace. The operator scenario runs `{operator_binary}`.\n",
        cli.runs
    );

    let initial: Vec<Figures> = results.initial.iter().map(|r| median(r)).collect();
    let ceiling: Vec<Figures> = results.ceiling.iter().map(|r| median(r)).collect();
    let ceiling_events: Vec<Figures> = results.ceiling_events.iter().map(|r| median(r)).collect();
    let at = |list: &[Figures], i: usize| list.get(i).cloned().unwrap_or_default();

    let _ = writeln!(out, "## Initial sync\n");
    let _ = writeln!(
        out,
        "The W×N objects are created in kcp while the agent is stopped; then the agent \
         starts. *Start → all copies* runs from spawning the agent to the last copy seen \
         by a watch on the service cluster. Throughput counts the objects between the \
         first and the last copy seen, for the agent and for the ceiling alike, so the \
         agent's start-up (in *start → first copy*) is not part of the ratio. The ceiling \
         is a minimal kube-rs client that lists the objects through the export's virtual \
         workspace once and then, {} objects at a time (the agent's sync worker \
         concurrency), adds the finalizer to the kcp object through the virtual workspace \
         and creates the copy (same content, built by the agent's own `new_local`).\n",
        cli.concurrency
    );
    let rows = agent_vs_ceiling_rows(cli, &initial, &ceiling, "sync", &["tail_s"]);
    table(
        &mut out,
        &[
            "W×N",
            "objects",
            "start → first copy s",
            "start → all copies s",
            "agent objects/s",
            "ceiling objects/s",
            "ratio",
            "busy after last copy s",
            "sync errors",
        ],
        &rows,
    );

    let _ = writeln!(out, "## Status back to kcp\n");
    let _ = writeln!(
        out,
        "After the initial sync the agent is stopped, every copy gets `status.phase` on \
         the service cluster, and the agent starts again; measured until a watch on each \
         consumer workspace has seen every status. The ceiling lists the copies once and \
         patches each status onto its kcp object through the virtual workspace.\n"
    );
    let rows = agent_vs_ceiling_rows(cli, &initial, &ceiling, "status", &[]);
    table(
        &mut out,
        &[
            "W×N",
            "objects",
            "start → first status s",
            "start → all statuses s",
            "agent objects/s",
            "ceiling objects/s",
            "ratio",
            "sync errors",
        ],
        &rows,
    );

    write_bound(&mut out, cli, &initial, &ceiling, &ceiling_events);

    let _ = writeln!(out, "## Agent memory and CPU\n");
    let _ = writeln!(
        out,
        "From the initial-sync runs. *Binding*: creating the W consumer workspaces and \
         binding each to the export (the benchmark's setup, 8 at a time). *kcp connections*: \
         the agent's established TCP connections to kcp, with the W workspaces bound and \
         nothing to sync (its watches go through each endpoint's `/clusters/*`, so they do \
         not grow with W). *No objects*: RSS of the agent with the W workspaces \
         bound and nothing to sync, once its sync worker runs and it is idle. *Peak*: VmHWM of the agent that did the \
         initial sync. *Steady*: its VmRSS once it has been idle for {}s plus {}s. \
         Bytes/object = (steady − no objects) / objects. *After deletion*: its VmRSS once \
         the status sync is done, every object is deleted in kcp and gone, and it has been \
         idle for {}s plus {}s (its housekeeping forgets tombstones and idle workspace \
         clients by then). CPU is user + system time from \
         `/proc/<pid>/stat`, from spawn until idle.\n",
        SETTLE_QUIET.as_secs(),
        STEADY_WINDOW.as_secs(),
        SETTLE_QUIET.as_secs(),
        AFTER_DELETION_WAIT.as_secs()
    );
    let rows: Vec<Vec<String>> = cli
        .sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let a = at(&initial, i);
            let per_object = match (value(&a, "rss_steady"), value(&a, "rss_empty")) {
                (Some(steady), Some(empty)) => Some((steady - empty) / size.total() as f64),
                _ => None,
            };
            let cpu = value(&a, "cpu_s_to_idle");
            vec![
                size.to_string(),
                size.total().to_string(),
                fmt(value(&a, "setup.bind_s"), 1),
                fmt(value(&a, "kcp_connections"), 0),
                mib(value(&a, "rss_empty")),
                mib(value(&a, "rss_peak")),
                mib(value(&a, "rss_steady")),
                fmt(per_object, 0),
                mib(value(&a, "rss_deleted")),
                fmt(cpu, 2),
                fmt(cpu.map(|c| 1000.0 * c / size.total() as f64), 2),
                fmt(value(&a, "idle_cpu_percent"), 2),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "W×N",
            "objects",
            "binding W workspaces s",
            "kcp connections, no objects",
            "RSS, no objects MiB",
            "peak RSS MiB",
            "steady RSS MiB",
            "bytes/object",
            "RSS after deletion MiB",
            "CPU s",
            "CPU ms/object",
            "idle CPU %",
        ],
        &rows,
    );

    if !results.latency.is_empty() {
        let l = median(&results.latency);
        let _ = writeln!(out, "## Latency\n");
        let _ = writeln!(
            out,
            "One object at a time, taking turns over {} workspaces, with the agent running \
             and idle (one warm-up object per workspace first). *Create*: from sending the \
             create to kcp to a watch on the service cluster seeing the copy. *Status*: from \
             sending the status patch to the copy to a watch on the consumer workspace \
             seeing it. p50/p99 per run (nearest rank), median over runs.\n",
            cli.latency_workspaces
        );
        let rows: Vec<Vec<String>> = [
            ("create in kcp → copy exists", "create"),
            ("status on the copy → visible in kcp", "status"),
        ]
        .iter()
        .map(|(label, key)| {
            vec![
                (*label).to_string(),
                fmt(value(&l, &format!("{key}.samples")), 0),
                fmt(value(&l, &format!("{key}.p50_ms")), 1),
                fmt(value(&l, &format!("{key}.p99_ms")), 1),
            ]
        })
        .collect();
        table(
            &mut out,
            &["path", "samples per run", "p50 ms", "p99 ms"],
            &rows,
        );
    }

    if !results.deletion.is_empty() {
        let d = median(&results.deletion);
        let _ = writeln!(out, "## Deletion\n");
        let _ = writeln!(
            out,
            "All objects synced and the agent idle; one collection delete per workspace in \
             kcp, measured until a watch on each workspace has seen every object deleted \
             (the agent deleted the copy, saw it gone and released its finalizer).\n"
        );
        table(
            &mut out,
            &[
                "W×N",
                "objects",
                "delete → gone from kcp s",
                "objects/s",
                "copies left",
                "sync errors",
            ],
            &[vec![
                cli.deletion.to_string(),
                cli.deletion.total().to_string(),
                fmt(value(&d, "delete.total_s"), 2),
                fmt(value(&d, "delete.rate"), 1),
                fmt(value(&d, "delete.copies_left"), 0),
                fmt(value(&d, "delete.errors"), 0),
            ]],
        );
    }

    if !results.operator.is_empty() {
        let o = median(&results.operator);
        let _ = writeln!(out, "## Operator: many consumer workspaces\n");
        let _ = writeln!(
            out,
            "W child workspaces of one parent carry a label; one offering selects them \
             (`spec.consumers.selector`) and the operator binds each. *All bound*: from \
             applying the offering until its status counts W bound consumers. Then one more \
             labelled workspace: from its create request until the status counts W + 1 (the \
             operator watches the parent's children and binds one once it is Ready), and the \
             kcp requests and the operator's CPU of that time: kcp's own work to create the \
             workspace, the operator's reconciles (they ask kcp only about bindings not \
             confirmed bound in the last 10 to 15 minutes) and the offering's own objects \
             (export, RBAC, token) that every reconcile applies.\n"
        );
        table(
            &mut out,
            &[
                "W",
                "creating W workspaces s",
                "apply → all bound s",
                "kcp requests/binding",
                "operator CPU ms/binding",
                "one more: created → bound s",
                "its kcp requests",
                "its operator CPU ms",
            ],
            &[vec![
                cli.operator_workspaces.to_string(),
                fmt(value(&o, "op.setup_s"), 1),
                fmt(value(&o, "op.bind_all_s"), 1),
                fmt(value(&o, "op.all.req_total.kcp"), 2),
                fmt(value(&o, "op.all.cpu_ms.client"), 2),
                fmt(value(&o, "op.one_s"), 1),
                fmt(value(&o, "op.one.req_total.kcp"), 0),
                fmt(value(&o, "op.one.cpu_ms.client"), 0),
            ]],
        );
    }

    write_costs(
        &mut out,
        cli,
        [&initial, &ceiling, &ceiling_events],
        results,
        background,
    );
    out
}

/// The processes whose CPU time a phase costs.
pub(crate) const PROCESSES: [&str; 4] = ["client", "kcp", "kube-apiserver", "etcd"];

/// One row per size comparing the agent with the ceiling in `phase` (`sync`
/// or `status`): first and total seconds, both rates and their ratio, then
/// the agent's `extra` figures (one decimal) and its error count.
fn agent_vs_ceiling_rows(
    cli: &Cli,
    initial: &[Figures],
    ceiling: &[Figures],
    phase: &str,
    extra: &[&str],
) -> Vec<Vec<String>> {
    let at = |list: &[Figures], i: usize| list.get(i).cloned().unwrap_or_default();
    cli.sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let (a, c) = (at(initial, i), at(ceiling, i));
            let key = |name: &str| format!("{phase}.{name}");
            let mut row = vec![
                size.to_string(),
                size.total().to_string(),
                fmt(value(&a, &key("first_s")), 2),
                fmt(value(&a, &key("total_s")), 2),
                fmt(value(&a, &key("rate")), 1),
                fmt(value(&c, &key("rate")), 1),
                ratio(value(&a, &key("rate")), value(&c, &key("rate"))),
            ];
            row.extend(extra.iter().map(|name| fmt(value(&a, &key(name)), 1)));
            row.push(fmt(value(&a, &key("errors")), 0));
            row
        })
        .collect()
}

/// CPU milliseconds per object of a phase, summed over the client and the
/// servers.
pub(crate) fn cpu_per_object(f: &Figures, phase: &str) -> Option<f64> {
    PROCESSES
        .iter()
        .map(|p| value(f, &format!("{phase}.cpu_ms.{p}")))
        .sum()
}

/// `a / b / c` of formatted values, for cells comparing the agent, the
/// ceiling and the ceiling with events.
pub(crate) fn triple(values: [Option<f64>; 3], decimals: usize) -> String {
    values.map(|v| fmt(v, decimals)).join(" / ")
}

/// Why the ratio is what it is: the CPU one object costs every process on
/// the machine, the cores that kept busy, and the ceiling with the agent's
/// events as a second reference.
pub(crate) fn write_bound(
    out: &mut String,
    cli: &Cli,
    initial: &[Figures],
    ceiling: &[Figures],
    ceiling_events: &[Figures],
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "## What bounds the ratio
"
    );
    let _ = writeln!(
        out,
        "The agent, the ceiling's client and the three servers share the machine's {cores} \
         cores, so a phase's throughput is at most the cores divided by the CPU one object \
         costs all of them. *CPU ms/object* sums the client's, kcp's, kube-apiserver's and \
         etcd's CPU per object (the cost table below, start-up included for the agent); \
         *cores busy* is that times objects/s. *Ceiling + events* is the ceiling's client \
         also recording, through the agent's own event sink (one write at a time, the \
         newest dropped beyond a queue of 1000), the events the agent records on the \
         consumers' objects: `ObjectAccepted` and `ObjectPlaced` per new object, \
         `ObjectStatusSynced` per status. Cells read agent / ceiling / ceiling + events.\n"
    );
    let mut rows = Vec::new();
    for (i, size) in cli.sizes.iter().enumerate() {
        for phase in ["sync", "status"] {
            let figures = [initial.get(i), ceiling.get(i), ceiling_events.get(i)];
            let of = |key: &str| figures.map(|f| f.and_then(|f| value(f, key)));
            let rate = of(&format!("{phase}.rate"));
            let cpu = figures.map(|f| f.and_then(|f| cpu_per_object(f, phase)));
            let busy = [0, 1, 2].map(|j| Some(rate[j]? * cpu[j]? / 1000.0));
            let events = of(&format!("{phase}.req.kcp POST events"));
            rows.push(vec![
                size.to_string(),
                phase.to_string(),
                triple(rate, 1),
                ratio(rate[0], rate[1]),
                ratio(rate[0], rate[2]),
                triple(cpu, 2),
                triple(busy, 2),
                triple(events, 2),
            ]);
        }
    }
    table(
        out,
        &[
            "W×N",
            "phase",
            "objects/s",
            "agent ÷ ceiling",
            "agent ÷ ceiling + events",
            "CPU ms/object",
            "cores busy",
            "events written/object",
        ],
        &rows,
    );
}

/// Server-side cost per object: requests and CPU, agent against ceiling
/// (and the ceiling with events, when it ran).
pub(crate) fn write_costs(
    out: &mut String,
    cli: &Cli,
    [initial, ceiling, ceiling_events]: [&[Figures]; 3],
    results: &Results,
    background: &BTreeMap<String, f64>,
) {
    let idle: Vec<String> = background
        .iter()
        .map(|(name, rate)| format!("{name} {:.1} %", rate * 100.0))
        .collect();
    let _ = writeln!(out, "## Cost per object on the servers\n");
    let _ = writeln!(
        out,
        "Deltas of the servers' `apiserver_request_total` and of each process's CPU time \
         over a phase, divided by the objects. *Client* is the agent (from its spawn until \
         it is idle again, start-up included) or the benchmark process running the ceiling \
         client (from its start until the last object is seen). The servers' idle CPU use, \
         measured for {}s before the first scenario ({}), times the phase's length is \
         subtracted. kcp counts a request to the virtual workspace and again the requests \
         the virtual workspace makes on its behalf (a patch through it shows as PATCH, GET \
         and PUT, plus a SubjectAccessReview for the caller), so compare the agent's column \
         with the ceiling's rather than reading absolute numbers.\n",
        BACKGROUND_WINDOW.as_secs(),
        if idle.is_empty() {
            "not measured".to_string()
        } else {
            idle.join(", ")
        }
    );
    let mut rows = Vec::new();
    let deletion = median(&results.deletion);
    for (i, size) in cli.sizes.iter().enumerate() {
        for (who, figures, phase) in [
            ("agent", initial.get(i), "sync"),
            ("ceiling", ceiling.get(i), "sync"),
            ("ceiling + events", ceiling_events.get(i), "sync"),
            ("agent", initial.get(i), "status"),
            ("ceiling", ceiling.get(i), "status"),
            ("ceiling + events", ceiling_events.get(i), "status"),
        ] {
            let Some(f) = figures else { continue };
            rows.push(cost_row(size.to_string(), phase, who, f));
        }
    }
    if !results.deletion.is_empty() {
        rows.push(cost_row(
            cli.deletion.to_string(),
            "delete",
            "agent",
            &deletion,
        ));
    }
    table(
        out,
        &[
            "W×N",
            "phase",
            "who",
            "kcp requests",
            "service requests",
            "client CPU ms",
            "kcp CPU ms",
            "kube-apiserver CPU ms",
            "etcd CPU ms",
        ],
        &rows,
    );

    // The breakdown for the largest size measured.
    let Some(largest) = (0..cli.sizes.len()).max_by_key(|&i| cli.sizes[i].total()) else {
        return;
    };
    let columns: Vec<(&str, Option<&Figures>, &str)> = [
        ("agent sync", initial.get(largest), "sync"),
        ("ceiling sync", ceiling.get(largest), "sync"),
        ("ceiling + events sync", ceiling_events.get(largest), "sync"),
        ("agent status", initial.get(largest), "status"),
        ("ceiling status", ceiling.get(largest), "status"),
        (
            "ceiling + events status",
            ceiling_events.get(largest),
            "status",
        ),
    ]
    .into_iter()
    .filter(|(_, f, _)| f.is_some())
    .collect();
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for (_, f, phase) in &columns {
        if let Some(f) = f {
            let prefix = format!("{phase}.req.");
            keys.extend(
                f.keys()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)),
            );
        }
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .filter_map(|key| {
            let values: Vec<Option<f64>> = columns
                .iter()
                .map(|(_, f, phase)| f.and_then(|f| value(f, &format!("{phase}.req.{key}"))))
                .collect();
            values
                .iter()
                .any(|v| v.is_some_and(|v| v >= 0.01))
                .then(|| {
                    std::iter::once(format!("`{key}`"))
                        .chain(values.iter().map(|v| fmt(*v, 2)))
                        .collect()
                })
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Requests per object by server, verb and resource, at {} (rows under 0.01 left out):\n",
        cli.sizes[largest]
    );
    let header: Vec<&str> = std::iter::once("request")
        .chain(columns.iter().map(|(name, _, _)| *name))
        .collect();
    table(out, &header, &rows);
}

pub(crate) fn cost_row(size: String, phase: &str, who: &str, f: &Figures) -> Vec<String> {
    let get = |key: &str| value(f, &format!("{phase}.{key}"));
    vec![
        size,
        phase.to_string(),
        who.to_string(),
        fmt(get("req_total.kcp"), 2),
        fmt(get("req_total.service"), 2),
        fmt(get("cpu_ms.client"), 2),
        fmt(get("cpu_ms.kcp"), 2),
        fmt(get("cpu_ms.kube-apiserver"), 2),
        fmt(get("cpu_ms.etcd"), 2),
    ]
}
