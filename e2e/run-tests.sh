#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, unit tests
# (including the CRD drift check), then the end-to-end tests against a real
# kcp and a real kube-apiserver that this script builds, starts and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
# --all-targets leaves out test targets with `test = false`.
cargo clippy --locked -p e2e --test sharded -- -D warnings

step "unit tests (with the CRD drift check)"
cargo test --workspace --exclude e2e --locked

step "building kcp, kube-apiserver and etcd (skipped when unchanged)"
e2e/env/build.sh

step "Dockerfile lint (BuildKit's checks, no engine needed)"
.e2e-bin/dockerfile-lint Dockerfile

step "end-to-end tests against the real servers"
cargo build --locked --bin testenv --bin sync-agent --bin offering-operator
target/debug/testenv run -- cargo test --locked -p e2e

step "end-to-end tests against a sharded kcp (two shards, cache server, front proxy)"
target/debug/testenv --sharded --dir .e2e-sharded run -- cargo test --locked -p e2e --test sharded -- --test-threads=1
