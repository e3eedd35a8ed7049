#!/usr/bin/env bash
# Builds the test environment's servers from Go modules: kcp (module ./kcp),
# kube-apiserver and etcd (module ./kube-apiserver), helm (module ./helm)
# for the chart's tests, and dockerfile-lint (module ./dockerfile-lint,
# BuildKit's Dockerfile checks) for the Dockerfile. Binaries go to
# <repo>/.e2e-bin and are rebuilt only when their module's go.mod/go.sum or
# the Go version change. Go's module and build caches stay in their default
# places, so a rebuild after a change reuses everything that did not change.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${E2E_BIN_DIR:-$(cd "$here/../.." && pwd)/.e2e-bin}
mkdir -p "$bin_dir"

# The kcp-dev modules kcp depends on are not in the public checksum database;
# go.sum, committed beside each go.mod, pins their hashes instead.
export GONOSUMDB=${GONOSUMDB:-github.com/kcp-dev}
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
export GOTOOLCHAIN=local

# A module's own Go files (the lint tool's) count as inputs too.
inputs_hash() {
  {
    go version
    cat "$here/$1/go.mod" "$here/$1/go.sum"
    find "$here/$1" -maxdepth 1 -name '*.go' -exec cat {} +
  } | sha256sum | cut -d' ' -f1
}

# build <module dir> <output name> <package>
build() {
  local module=$1 name=$2 package=$3
  local stamp="$bin_dir/$name.inputs" want
  want="$(inputs_hash "$module") $package"
  if [[ -x "$bin_dir/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "build.sh: $name is up to date"
    return
  fi
  echo "build.sh: building $name from $package"
  local start=$SECONDS
  (cd "$here/$module" && go build -o "$bin_dir/$name.tmp" "$package")
  mv "$bin_dir/$name.tmp" "$bin_dir/$name"
  echo "$want" > "$stamp"
  echo "build.sh: built $name in $((SECONDS - start))s"
}

build kcp kcp github.com/kcp-dev/kcp/cmd/kcp
build kube-apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-apiserver etcd go.etcd.io/etcd/server/v3
build helm helm helm.sh/helm/v3/cmd/helm
build dockerfile-lint dockerfile-lint .
