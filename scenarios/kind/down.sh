#!/usr/bin/env bash
# Deletes the kind clusters up.sh made.   DRY_RUN=1 prints what it would do.
# shellcheck source=scenarios/kind/lib.sh
source "$(dirname "$0")/lib.sh"
need kind
for mesh in "${MESHES[@]}"; do
  run kind delete cluster --name "meshfed-$mesh"
done
