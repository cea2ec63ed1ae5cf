#!/usr/bin/env bash
# Two kind clusters, alpha and beta, each with its own CA and trust domain
# (<mesh>.local), meshfed in Kubernetes mode, the echo apps with injected sidecars, and
# federation: beta exports orders to alpha, alpha imports it with importAsLocal (so beta's
# orders are a failover group of alpha's). Trust is exchanged with a peering token: alpha's
# control plane issues it, beta's redeems it at alpha through alpha's ingress gateway; each
# stores the other's bundle in its cluster. No root is copied by hand.
#   scenarios/kind/up.sh            # needs docker, kind, kubectl
#   DRY_RUN=1 scenarios/kind/up.sh  # prints what it would do
# shellcheck source=scenarios/kind/lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind kubectl

say "build the binary and the image"
if [[ "$DRY_RUN" == 1 && ! -x "$MESHFED" ]]; then
  MESHFED="$ROOT/target/debug/meshfed"
fi
run cargo build --release --locked --manifest-path "$ROOT/Cargo.toml"
run docker build -t "$IMAGE" "$ROOT"

for mesh in "${MESHES[@]}"; do
  say "cluster $mesh"
  run kind create cluster --name "meshfed-$mesh" --wait 120s
  run kind load docker-image "$IMAGE" --name "meshfed-$mesh"
  rm -rf "$WORK/$mesh-ca"
  "$MESHFED" trust init --dir "$WORK/$mesh-ca" --trust-domain "$mesh.local" >/dev/null
done

for mesh in "${MESHES[@]}"; do
  peer="$(peer_of "$mesh")"
  say "meshfed in $mesh (peer: $peer): CRDs, RBAC, CA, gateways, control plane"
  kc "$mesh" apply -f "$ROOT/deploy/crds/"
  kc "$mesh" apply -f "$ROOT/deploy/namespace.yaml"
  kc "$mesh" apply -f "$ROOT/deploy/rbac.yaml"
  kc "$mesh" -n meshfed-system create secret generic meshfed-ca --from-file="$WORK/$mesh-ca"
  sed "s/example-peer/$peer/g; s/type: LoadBalancer/type: NodePort/" "$ROOT/deploy/gateways.yaml" \
    >"$WORK/$mesh-gateways.yaml"
  kc "$mesh" apply -f "$WORK/$mesh-gateways.yaml"
done

for mesh in "${MESHES[@]}"; do
  sed "s/example-mesh/$mesh/g" "$ROOT/deploy/control-plane.yaml" >"$WORK/$mesh-control-plane.yaml"
  kc "$mesh" apply -f "$WORK/$mesh-control-plane.yaml"
done
for mesh in "${MESHES[@]}"; do
  kc "$mesh" -n meshfed-system rollout status deploy/meshfed-control --timeout=120s
done

# Where a mesh's ingress gateway for its peer is reachable from the other cluster: its node's
# address on the kind network and the gateway Service's NodePorts (tls, discovery).
ingress_of() {
  local mesh="$1" peer
  peer="$(peer_of "$mesh")"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "172.18.0.2 31443 31188"
    return
  fi
  node_port() {
    kubectl --context "kind-meshfed-$mesh" -n meshfed-system get svc "ingress-$peer" \
      -o "jsonpath={.spec.ports[?(@.name==\"$1\")].nodePort}"
  }
  echo "$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \
    "meshfed-$mesh-control-plane") $(node_port tls) $(node_port discovery)"
}

# In a control plane's pod: the CA key stays there, and the token commands keep their
# records in the cluster (--kube) with the pod's service account.
in_control() {
  local mesh="$1"
  shift
  kc "$mesh" -n meshfed-system exec deploy/meshfed-control -c control -- meshfed "$@"
}

# alpha's ServiceMeshPeer for beta (with beta's ingress) and its import go in first: alpha's
# gateways for beta serve — its discovery port, where beta redeems the token, included — once
# their ServiceMeshPeer exists. alpha's import stays unconnected until the token brings trust.
say "federation in alpha"
read -r address service_port discovery_port <<<"$(ingress_of beta)"
sed "s/MESH/alpha/g; s/PEER/beta/g; s/ADDRESS/$address/g; s/SERVICE_PORT/$service_port/g; s/DISCOVERY_PORT/$discovery_port/g" \
  "$KIND_DIR/federation-alpha.yaml" >"$WORK/alpha-federation.yaml"
"$MESHFED" validate "$WORK/alpha-federation.yaml" >/dev/null
kc alpha apply -n meshfed-system -f "$WORK/alpha-federation.yaml"
kc alpha -n meshfed-system rollout status deploy/gateways-beta --timeout=120s

say "peering token: alpha issues, beta accepts (redeemed at alpha through its ingress gateway)"
read -r address service_port discovery_port <<<"$(ingress_of alpha)"
create=(peering token create --peer-name alpha --address "$address"
  --service-port "$service_port" --discovery-port "$discovery_port"
  --server-id spiffe://alpha.local/ns/meshfed-system/sa/meshfed-peering
  --client-id alpha.local/ns/meshfed-system/sa/egress-beta-service-account --ttl 15m)
accept=(peering token accept --mesh-name beta)
token="$(in_control alpha "${create[@]}" --kube --dir /etc/meshfed/ca)"
if [[ "$DRY_RUN" == 1 ]]; then
  # The same commands on the local CAs (beta does not redeem: no cluster to reach).
  token="$("$MESHFED" "${create[@]}" --dir "$WORK/alpha-ca" 2>/dev/null)"
fi
# beta's ServiceMeshPeer for alpha comes out of the token.
in_control beta "${accept[@]}" --kube --dir /etc/meshfed/ca "$token" >"$WORK/beta-peer-alpha.yaml"
if [[ "$DRY_RUN" == 1 ]]; then
  "$MESHFED" "${accept[@]}" --dir "$WORK/beta-ca" --namespace meshfed-system --no-redeem \
    "$token" >"$WORK/beta-peer-alpha.yaml" 2>/dev/null
fi

say "federation in beta: the ServiceMeshPeer from the token, the export"
{
  sed "s/PEER/alpha/g" "$KIND_DIR/federation-beta.yaml"
  echo "---"
  cat "$WORK/beta-peer-alpha.yaml"
} >"$WORK/beta-federation.yaml"
"$MESHFED" validate "$WORK/beta-federation.yaml" >/dev/null
kc beta apply -n meshfed-system -f "$WORK/beta-federation.yaml"

for mesh in "${MESHES[@]}"; do
  # The control plane writes the bootstrap Secret (meshfed-bootstrap) itself, in its own
  # namespace and wherever injected pods run; the pods start once it is there.
  say "apps in $mesh (sidecars injected)"
  sed "s/MESH/$mesh/g" "$KIND_DIR/apps.yaml" >"$WORK/$mesh-apps.yaml"
  "$MESHFED" inject --image "$IMAGE" "$WORK/$mesh-apps.yaml" >"$WORK/$mesh-apps-injected.yaml"
  kc "$mesh" apply -f "$WORK/$mesh-apps-injected.yaml"
done
say "up: run scenarios/kind/failover.sh"
