#!/usr/bin/env bash
# Builds a real Kubernetes API server for the tests' real-API tier (k8s/tests/real_api.rs):
# upstream v1.20.2 from Debian bookworm's `kubernetes` source package (its vendor/ tree, built
# offline by Debian's Go), with Debian's etcd beside it. The binaries are cached outside the
# repository ($MESHFED_KUBE_CACHE, default ~/.cache/meshfed/kube-1.20.2) and reused: a fresh
# machine pays the build once (about 10 minutes on 2 cores, 2.2 GB of build tree, removed
# after). The machine's apt configuration is left as it is: the source package comes through
# a private apt state folder whose list is the bookworm `deb-src` line.
#
#   scripts/kube-apiserver.sh build    build unless cached; print the cache folder
#   scripts/kube-apiserver.sh path     print the cache folder if the binaries are there
set -euo pipefail

VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${MESHFED_KUBE_CACHE:-$HOME/.cache/meshfed/kube-1.20.2}
BUILD=${MESHFED_KUBE_BUILD:-${TMPDIR:-/tmp}/meshfed-kube-build}

have() { [ -x "$CACHE/kube-apiserver" ] && [ -x "$CACHE/etcd" ]; }

case "${1:-build}" in
path)
  have && echo "$CACHE"
  exit 0
  ;;
build) ;;
*)
  echo "usage: $0 build|path" >&2
  exit 2
  ;;
esac

if have; then
  echo "$CACHE"
  exit 0
fi

echo "== packages" >&2
need=()
for p in golang-go etcd-server rsync make openssl golang-github-modern-go-reflect2-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== source package kubernetes $VERSION" >&2
rm -rf "$BUILD"
mkdir -p "$BUILD"/apt/{lists/partial,cache/archives/partial,parts} "$BUILD/src" "$BUILD/tree"
cat >"$BUILD/apt/sources.list" <<'EOF'
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
EOF
apt_private=(
  -o "Dir::State::Lists=$BUILD/apt/lists"
  -o "Dir::Etc::sourcelist=$BUILD/apt/sources.list"
  -o "Dir::Etc::sourceparts=$BUILD/apt/parts"
  -o "Dir::Cache=$BUILD/apt/cache"
)
apt-get "${apt_private[@]}" update -qq
(cd "$BUILD/src" && apt-get "${apt_private[@]}" source --download-only -qq "kubernetes=$VERSION" 2>/dev/null)
tar -xzf "$BUILD"/src/kubernetes_*.orig.tar.gz -C "$BUILD/tree" --strip-components=1

echo "== reflect2 1.0.2 for the vendored 1.0.1 (which faults under Go >= 1.18)" >&2
vendored="$BUILD/tree/vendor/github.com/modern-go/reflect2"
rm -f "$vendored"/*.go "$vendored"/*.s
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$vendored/"
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$vendored/" 2>/dev/null || true
rm -f "$vendored"/*_test.go

echo "== make WHAT=cmd/kube-apiserver cmd/kube-controller-manager (several minutes)" >&2
(cd "$BUILD/tree" && CGO_ENABLED=0 GOPROXY=off GOFLAGS='' \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$BUILD/make.log" 2>&1) || {
  tail -40 "$BUILD/make.log" >&2
  exit 1
}

mkdir -p "$CACHE"
out="$BUILD/tree/_output/local/bin/linux/amd64"
[ -x "$out/kube-apiserver" ] || out="$BUILD/tree/_output/bin"
cp "$out/kube-apiserver" "$out/kube-controller-manager" "$CACHE/"
ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$CACHE/etcd"
rm -rf "$BUILD"
"$CACHE/kube-apiserver" --version >&2
echo "$CACHE"
