#!/usr/bin/env bash
# Writes cli/sidecar.order: the functions a sidecar runs — starting, serving inbound mTLS and
# outbound requests, idling — as the linker's section ordering list, hottest first. A release
# build of `meshfed` lays them out together at the start of .text (cli/build.rs), so a sidecar
# touches a few hundred kilobytes of contiguous code instead of pages spread over the whole
# one-binary image (the kernel maps file pages in 64 KiB runs around each fault: scattered
# hot code is what made most of an idle sidecar's RSS). Functions are recorded with
# valgrind's callgrind, which sees every function executed, not a sample.
#
#   scripts/sidecar-order.sh   # needs a release build, valgrind and oha
#
# Run it again after large changes to the proxy; a stale list only loses some of the gain
# (names it holds that no longer exist are ignored).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
M="${MESHFED:-$ROOT/target/release/meshfed}"
OUT="$ROOT/cli/sidecar.order"
W="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
for tool in valgrind oha callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[[ -x "$M" ]] || { echo "no release build at $M: cargo build --release" >&2; exit 1; }

cd "$W"
"$M" trust init --dir ca --trust-domain order.local >/dev/null
"$M" trust issue --dir ca --id spiffe://order.local/ns/web/sa/ui --out ui >/dev/null
cat >mesh.yaml <<'EOF'
apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: order, namespace: order-system}
spec:
  trustDomain: order.local
  services:
  - {name: echo, namespace: shop, ports: [{name: http, port: 8080}]}
  - {name: ui, namespace: web, ports: [{name: http, port: 8080}]}
  workloads:
  - {name: echo-1, namespace: shop, service: echo, inbound: "127.0.77.2:15006", app: "127.0.77.1:8080"}
  - {name: ui-1, namespace: web, service: ui, inbound: "127.0.77.3:15006", app: "127.0.77.3:8080"}
EOF
"$M" echo --listen 127.0.77.1:8080 --mesh order --instance origin 2>/dev/null &
pids+=($!)
sidecar() {
  local name="$1"
  shift
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$W/$name.cg" --dump-instr=no \
    --compress-strings=no --compress-pos=no \
    "$M" proxy --mesh mesh.yaml --dir ca --workers 1 "$@" 2>"$W/$name.log" &
  pids+=($!)
}
sidecar server --workload echo-1
sidecar client --workload ui-1 --outbound 127.0.77.4:15001
wait_port() {
  for _ in $(seq 1 600); do
    if (echo >"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1:$2" >&2
  tail -n 20 "$W"/*.log >&2
  exit 1
}
wait_port 127.0.77.2 15006
wait_port 127.0.77.4 15001
sleep 2
echo "== load through both sidecars (P1 and P2 paths)" >&2
oha --no-tui -n 400 -c 4 --cert ui.pem --key ui-key.pem --insecure \
  https://127.0.77.2:15006/ >/dev/null
oha --no-tui -n 400 -c 4 -H "Host: echo.shop.svc.cluster.local" http://127.0.77.4:15001/ >/dev/null
oha --no-tui -n 100 -c 4 -m POST -d "hello" -H "Host: echo.shop.svc.cluster.local" \
  http://127.0.77.4:15001/ >/dev/null
sleep 3 # idle: timers, renewals' checks
for i in 1 2; do kill -TERM "${pids[$i]}"; done
for i in 1 2; do wait "${pids[$i]}" 2>/dev/null || true; done

# Every function of the binary with a cost, hottest first (callgrind marks a recursion's
# copies with 'N), as lld's symbol ordering file wants them.
nm "$M" | awk '$2 ~ /^[tT]$/ { print $3 }' | sort -u >"$W/symbols"
for f in "$W"/server.cg "$W"/client.cg; do
  callgrind_annotate --threshold=100 --inclusive=no "$f" 2>/dev/null
done | awk '
  /^ *[0-9,]+ / {
    ir = $1; gsub(",", "", ir)
    line = $0; sub(/^ *[0-9,]+ +(\([^)]*\) +)?/, "", line)
    n = split(line, parts, ":")
    fn = parts[n]
    sub(/ .*/, "", fn)
    sub(/'"'"'[0-9]+$/, "", fn)
    cost[fn] += ir
  }
  END { for (fn in cost) printf "%d %s\n", cost[fn], fn }' |
  sort -k1,1rn | awk '!seen[$2]++ { print $2 }' >"$W/ran"
awk 'NR == FNR { known[$1] = 1; next } known[$1] { print $1 }' \
  "$W/symbols" "$W/ran" >"$OUT.tmp"
n="$(wc -l <"$OUT.tmp")"
[[ "$n" -gt 200 ]] || { echo "only $n functions recorded; not writing $OUT" >&2; exit 1; }
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT: $n functions" >&2
