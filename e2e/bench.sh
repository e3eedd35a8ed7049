#!/usr/bin/env bash
# The project's benchmark (README "Benchmarks", issue 9): builds release
# binaries, starts the test servers in a state directory of their own, runs
# the scenarios, prints the report and writes BENCHMARKS.md at the repository
# root. Arguments go to the benchmark binary (`target/release/bench --help`);
# without any it runs the full scenarios, three runs each. A quick check:
#   e2e/bench.sh --runs 1 --sizes 2x20 --latency-samples 20 --deletion 2x20
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

# Not .e2e-run: a benchmark never touches the servers of a test run.
state_dir="$PWD/.e2e-bench"

step "building release binaries"
cargo build --release --locked -p sync-agent --bin sync-agent
cargo build --release --locked -p offering-operator --bin offering-operator
cargo build --release --locked -p e2e --bin bench --bin testenv

step "building kcp, kube-apiserver and etcd (skipped when unchanged)"
e2e/env/build.sh

step "running the benchmark"
export SYNC_AGENT_BIN="$PWD/target/release/sync-agent"
export OFFERING_OPERATOR_BIN="$PWD/target/release/offering-operator"
export E2E_ENV_FILE="$state_dir/env"
target/release/testenv --dir "$state_dir" run -- \
  target/release/bench --command "e2e/bench.sh${*:+ $*}" "$@"
