#!/usr/bin/env bash
# Shared helpers of the kind scripts. With DRY_RUN=1 every command that would touch docker,
# kind or a cluster is printed instead of run (local meshfed commands run for real, into
# $WORK), so the scripts can be checked on a machine without a container engine.
set -euo pipefail

KIND_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$KIND_DIR/../.." && pwd)"
WORK="${WORK:-$ROOT/target/kind}"
DRY_RUN="${DRY_RUN:-0}"
# Used by the scripts that source this file.
# shellcheck disable=SC2034
MESHES=(alpha beta)
# shellcheck disable=SC2034
IMAGE="${IMAGE:-meshfed:dev}"
MESHFED="${MESHFED:-$ROOT/target/release/meshfed}"

# Runs a command, or prints it (on standard error) in a dry run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+ %s\n' "$*" >&2
  else
    "$@"
  fi
}

# Pipes standard input to a command, or prints the command (and the first input line) in a
# dry run.
run_stdin() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local first
    first="$(head -n 1)"
    printf '+ %s <<< %s...\n' "$*" "$first" >&2
  else
    "$@"
  fi
}

# kubectl against the kind cluster of mesh $1.
kc() {
  local mesh="$1"
  shift
  run kubectl --context "kind-meshfed-$mesh" "$@"
}

# kubectl with standard input, against mesh $1's cluster.
kc_stdin() {
  local mesh="$1"
  shift
  run_stdin kubectl --context "kind-meshfed-$mesh" "$@"
}

# The other mesh of the pair.
peer_of() {
  if [[ "$1" == alpha ]]; then echo beta; else echo alpha; fi
}

say() {
  printf '== %s\n' "$*"
}

need() {
  local tool
  for tool in "$@"; do
    if [[ "$DRY_RUN" != 1 ]] && ! command -v "$tool" >/dev/null; then
      echo "missing: $tool (see scenarios/kind/README.md)" >&2
      exit 1
    fi
  done
}

mkdir -p "$WORK"
