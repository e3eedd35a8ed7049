//! What the binaries print and accept, run as a provider runs them: JSON
//! log lines shaped like upstream's (`msg`, `level`, `time` at the top
//! level) up to and including the line saying why the process stopped,
//! text logs without colour codes when written to a file, and flags spelled
//! the Go way (`--flag=true`, `1h30m`). No server is needed: each run stops
//! on a kubeconfig that does not exist, after parsing every flag.

use std::process::{Command, Output};

use e2e::agent::project_binary;
use serde_json::{Map, Value};

fn run(binary: &str, args: &[&str]) -> Output {
    let missing = std::env::temp_dir().join("process-output-no-such-kubeconfig");
    Command::new(project_binary(binary).expect("a project binary"))
        .args(args)
        .env("KUBECONFIG", &missing)
        .env_remove("RUST_LOG")
        .output()
        .expect("binary runs")
}

/// Every line of `output`'s standard error as a JSON object.
fn json_lines(output: &Output) -> Vec<Map<String, Value>> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect()
}

fn assert_upstream_shape(lines: &[Map<String, Value>], last_msg: &str) {
    assert!(!lines.is_empty(), "no log lines");
    for line in lines {
        for key in ["msg", "level", "time"] {
            assert!(line[key].is_string(), "{key} missing at the top: {line:?}");
        }
        assert!(!line.contains_key("fields"), "nested fields: {line:?}");
    }
    let last = lines.last().expect("a last line");
    assert_eq!(last["level"], "error", "{last:?}");
    assert_eq!(last["msg"], last_msg, "{last:?}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("process-output-no-such-kubeconfig")),
        "the error names the missing file: {last:?}"
    );
}

#[test]
fn the_agent_fails_in_json_to_the_last_line_and_takes_go_style_booleans() {
    let output = run(
        "sync-agent",
        &[
            "--kcp-kubeconfig=/nonexistent/process-output-no-such-kubeconfig",
            "--namespace=agents",
            "--apiexportendpointslice-ref=widgets",
            "--log-format=json",
            "--log-debug=true",
            "--wait-for-foreign-finalizers=true",
            "--per-agent-related-finalizer=false",
            "--enable-leader-election=true",
            // Not the default ports: another test's agent may hold them.
            "--health-address=",
            "--metrics-address=",
        ],
    );
    assert!(!output.status.success(), "{output:?}");
    assert_upstream_shape(&json_lines(&output), "The agent stopped");
}

#[test]
fn a_taken_metrics_port_stops_the_agent_with_an_error_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    let output = run(
        "sync-agent",
        &[
            "--kcp-kubeconfig=/nonexistent/process-output-no-such-kubeconfig",
            "--namespace=agents",
            "--apiexportendpointslice-ref=widgets",
            "--log-format=json",
            "--health-address=",
            &format!("--metrics-address={address}"),
        ],
    );
    assert!(!output.status.success(), "{output:?}");
    let lines = json_lines(&output);
    let last = lines.last().expect("a last line");
    assert_eq!(last["msg"], "The agent stopped", "{last:?}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("cannot listen on {address} (--metrics-address): ")),
        "{last:?}"
    );
}

#[test]
fn the_operator_fails_in_json_to_the_last_line_and_takes_go_durations() {
    let output = run(
        "offering-operator",
        &[
            "run",
            "--agent-image=sync-agent:test",
            "--log-format=json",
            "--enable-leader-election=true",
            "--agent-token-lifetime=1h30m",
            "--agent-token-renew-before=45m",
            "--health-address=",
            "--metrics-address=",
        ],
    );
    assert!(!output.status.success(), "{output:?}");
    assert_upstream_shape(&json_lines(&output), "The operator stopped");
}

#[test]
fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let output = run(
        "sync-agent",
        &[
            "--kcp-kubeconfig=/nonexistent/process-output-no-such-kubeconfig",
            "--namespace=agents",
            "--apiexportendpointslice-ref=widgets",
            "--log-format=text",
            "--health-address=",
            "--metrics-address=",
        ],
    );
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("The agent stopped"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a file: {stderr:?}"
    );
}

/// Runs the operator with `flag` and returns its stderr, checking it refused
/// to start.
fn operator_refuses(flag: &str) -> String {
    let output = run("offering-operator", &["run", "--agent-image=x", flag]);
    assert!(!output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_duration_is_refused_with_an_example() {
    let stderr = operator_refuses("--agent-token-lifetime=90");
    assert!(stderr.contains("1h30m"), "{stderr}");
}

#[test]
fn an_unknown_log_level_is_refused_by_both_binaries_naming_the_flag() {
    let agent = run(
        "sync-agent",
        &[
            "--kcp-kubeconfig=/nonexistent/process-output-no-such-kubeconfig",
            "--namespace=agents",
            "--apiexportendpointslice-ref=widgets",
            "--log-level=verbose",
        ],
    );
    let operator = run(
        "offering-operator",
        &["run", "--agent-image=x", "--log-level=verbose"],
    );
    for output in [agent, operator] {
        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("invalid value 'verbose' for '--log-level <LOG_LEVEL>'")
                && stderr.contains("[possible values: error, warn, info, debug, trace]"),
            "{stderr}"
        );
    }
}

#[test]
fn a_resync_interval_under_a_second_is_refused() {
    let stderr = operator_refuses("--resync-interval=0s");
    assert!(
        stderr.contains("--resync-interval must be at least 1s"),
        "{stderr}"
    );
}
