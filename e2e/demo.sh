#!/usr/bin/env bash
# The README's demo: builds what is missing, starts real kcp and a real
# kube-apiserver, runs the operator and the agent, and publishes an offering
# end to end. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

e2e/env/build.sh
cargo build --locked --bin testenv --bin demo --bin sync-agent --bin offering-operator
exec target/debug/testenv --dir .e2e-demo run -- target/debug/demo "$@"
