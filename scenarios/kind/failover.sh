#!/usr/bin/env bash
# The failover test on the kind clusters up.sh made: alpha's ui calls
# orders.shop.svc.cluster.local through its sidecar; alpha's orders are scaled to zero, the
# calls must move to beta's orders (through both gateways); scaled back, they must come home.
#   scenarios/kind/failover.sh            # DRY_RUN=1 prints what it would do
# shellcheck source=scenarios/kind/lib.sh
source "$(dirname "$0")/lib.sh"
need kubectl

# Which mesh answers a call from alpha's ui (the echo reply names its mesh).
served_by() {
  if [[ "$DRY_RUN" == 1 ]]; then
    kc alpha -n web exec deploy/ui -c ui -- curl -s http://127.0.0.1:15001/ -H 'Host: orders.shop.svc.cluster.local'
    echo "$1"
    return
  fi
  kubectl --context kind-meshfed-alpha -n web exec deploy/ui -c ui -- \
    curl -s --max-time 5 http://127.0.0.1:15001/ -H 'Host: orders.shop.svc.cluster.local' |
    sed -n 's/.*"mesh": *"\([a-z]*\)".*/\1/p'
}

# Waits up to 60 s until calls are served by mesh $1.
expect_served_by() {
  local want="$1" got=""
  for _ in $(seq 1 60); do
    got="$(served_by "$want" || true)"
    if [[ "$got" == "$want" ]]; then
      say "served by $want"
      return 0
    fi
    sleep 1
  done
  echo "FAILED: calls are served by '${got:-nobody}', not $want" >&2
  exit 1
}

kc alpha -n web rollout status deploy/ui --timeout=120s
kc alpha -n shop rollout status deploy/orders --timeout=120s
expect_served_by alpha
say "scale alpha's orders to zero"
kc alpha -n shop scale deploy/orders --replicas=0
expect_served_by beta
say "scale alpha's orders back to two"
kc alpha -n shop scale deploy/orders --replicas=2
kc alpha -n shop rollout status deploy/orders --timeout=120s
expect_served_by alpha
say "PASSED"
