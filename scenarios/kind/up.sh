#!/usr/bin/env bash
# Two kind clusters, alpha and beta, each with its own CA and trust domain
# (<mesh>.local), meshfed in Kubernetes mode, the echo apps with injected sidecars, and
# federation: beta exports orders to alpha, alpha imports it with importAsLocal (so beta's
# orders are a failover group of alpha's). Peer roots are exchanged as Maistra does, in the
# ConfigMap each ServiceMeshPeer names in spec.security.certificateChain.
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
  cat "$WORK/$mesh-ca"/root-*.pem >"$WORK/$mesh-root-cert.pem"
done

for mesh in "${MESHES[@]}"; do
  peer="$(peer_of "$mesh")"
  say "meshfed in $mesh (peer: $peer): CRDs, RBAC, CA, the peer's root, gateways"
  kc "$mesh" apply -f "$ROOT/deploy/crds/"
  kc "$mesh" apply -f "$ROOT/deploy/namespace.yaml"
  kc "$mesh" apply -f "$ROOT/deploy/rbac.yaml"
  kc "$mesh" -n meshfed-system create secret generic meshfed-ca --from-file="$WORK/$mesh-ca"
  # The peer's root, where its ServiceMeshPeer's certificateChain points.
  kc "$mesh" -n meshfed-system create configmap "$peer-ca-root-cert" \
    --from-file=root-cert.pem="$WORK/$peer-root-cert.pem"
  sed "s/example-peer/$peer/g; s/type: LoadBalancer/type: NodePort/" "$ROOT/deploy/gateways.yaml" \
    >"$WORK/$mesh-gateways.yaml"
  kc "$mesh" apply -f "$WORK/$mesh-gateways.yaml"
done

# The federation resources go in before the control planes start: a control plane takes its
# peers when it starts.
say "federation"
for mesh in "${MESHES[@]}"; do
  peer="$(peer_of "$mesh")"
  if [[ "$DRY_RUN" == 1 ]]; then
    address="172.18.0.2"
    service_port=31443
    discovery_port=31188
  else
    address="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \
      "meshfed-$peer-control-plane")"
    node_port() {
      kubectl --context "kind-meshfed-$peer" -n meshfed-system get svc "ingress-$mesh" \
        -o "jsonpath={.spec.ports[?(@.name==\"$1\")].nodePort}"
    }
    service_port="$(node_port tls)"
    discovery_port="$(node_port discovery)"
  fi
  sed "s/MESH/$mesh/g; s/PEER/$peer/g; s/ADDRESS/$address/g; s/SERVICE_PORT/$service_port/g; s/DISCOVERY_PORT/$discovery_port/g" \
    "$KIND_DIR/federation-$mesh.yaml" >"$WORK/$mesh-federation.yaml"
  "$MESHFED" validate "$WORK/$mesh-federation.yaml" >/dev/null
  kc "$mesh" apply -f "$WORK/$mesh-federation.yaml"
done

for mesh in "${MESHES[@]}"; do
  say "control plane in $mesh"
  kc "$mesh" apply -f "$ROOT/deploy/control-plane.yaml"
  kc "$mesh" -n meshfed-system rollout status deploy/meshfed-control --timeout=120s
  # The control plane writes the bootstrap Secret (meshfed-bootstrap) itself, in its own
  # namespace and wherever injected pods run; the pods start once it is there.
  say "apps in $mesh (sidecars injected)"
  sed "s/MESH/$mesh/g" "$KIND_DIR/apps.yaml" >"$WORK/$mesh-apps.yaml"
  "$MESHFED" inject --image "$IMAGE" "$WORK/$mesh-apps.yaml" >"$WORK/$mesh-apps-injected.yaml"
  kc "$mesh" apply -f "$WORK/$mesh-apps-injected.yaml"
done
say "up: run scenarios/kind/failover.sh"
