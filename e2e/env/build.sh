#!/usr/bin/env bash
# Builds the test environment's servers from Go modules: kcp, its cache server
# and front proxy (module ./kcp),
# kube-apiserver and etcd (module ./kube-apiserver), kubectl (module ./kubectl,
# for the tests that run the docs' commands), helm (module ./helm)
# for the chart's tests, and dockerfile-lint (module ./dockerfile-lint,
# BuildKit's Dockerfile checks) for the Dockerfile. Binaries go to
# <repo>/.e2e-bin and are rebuilt only when their module's go.mod/go.sum,
# the Go version or their linker flags change. kube-apiserver and kcp are
# stamped with the Kubernetes release their go.mod requires, through the
# version ldflags of Kubernetes' and kcp's own builds, so /version reports
# e.g. v1.36.3 (kcp: v1.34.2+kcp-v0.30.0) and charts with a kubeVersion
# constraint install on them. Go's module and build caches stay in their default
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

# kube_version_ldflags <module dir> [version suffix]: the -X flags
# Kubernetes' build (hack/lib/version.sh) sets, for the release of
# k8s.io/kubernetes that the module requires (its requirement, not a replace).
kube_version_ldflags() {
  local version major minor flags=""
  version=$(cd "$here/$1" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  [[ $version =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || {
    echo "build.sh: k8s.io/kubernetes $version in $1 is not a release" >&2
    return 1
  }
  major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]} version+=${2:-}
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $package.gitVersion=$version -X $package.gitMajor=$major"
    flags+=" -X $package.gitMinor=$minor -X $package.gitTreeState=clean"
  done
  echo "${flags# }"
}

# build <module dir> <output name> <package> [linker flags]
build() {
  local module=$1 name=$2 package=$3 ldflags=${4:-}
  local stamp="$bin_dir/$name.inputs" want
  want="$(inputs_hash "$module") $package"
  [[ -z $ldflags ]] || want+=" ldflags: $ldflags"
  if [[ -x "$bin_dir/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "build.sh: $name is up to date"
    return
  fi
  echo "build.sh: building $name from $package"
  local start=$SECONDS
  (cd "$here/$module" && go build -ldflags="$ldflags" -o "$bin_dir/$name.tmp" "$package")
  mv "$bin_dir/$name.tmp" "$bin_dir/$name"
  echo "$want" > "$stamp"
  echo "build.sh: built $name in $((SECONDS - start))s"
}

# kcp's Makefile stamps <kubernetes version>+kcp-<kcp version>.
kcp_version=$(cd "$here/kcp" && go list -m -f '{{.Version}}' github.com/kcp-dev/kcp)
kcp_ldflags=$(kube_version_ldflags kcp "+kcp-$kcp_version")
kube_apiserver_ldflags=$(kube_version_ldflags kube-apiserver)
build kcp kcp github.com/kcp-dev/kcp/cmd/kcp "$kcp_ldflags"
# The sharded test servers (testenv --sharded): kcp's cache server and front proxy.
build kcp cache-server github.com/kcp-dev/kcp/cmd/cache-server "$kcp_ldflags"
build kcp kcp-front-proxy github.com/kcp-dev/kcp/cmd/kcp-front-proxy "$kcp_ldflags"
build kube-apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$kube_apiserver_ldflags"
build kube-apiserver etcd go.etcd.io/etcd/server/v3
build kubectl kubectl .
build helm helm helm.sh/helm/v3/cmd/helm
build dockerfile-lint dockerfile-lint .
