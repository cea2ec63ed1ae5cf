#!/usr/bin/env bash
# Prints the hostile-input summary table from the rows the suite's tests wrote, one file per
# surface (meshfed_test_support::hostile::Tally::finish): vectors tried, refused with the
# expected reason, panics.
set -euo pipefail
dir=${1:-target/tmp/hostile}
if ! compgen -G "$dir/*.tsv" >/dev/null; then
  echo "hostile inputs: no rows in $dir"
  exit 0
fi
sort "$dir"/*.tsv | awk -F'\t' '
  BEGIN { printf "%-44s %9s %13s %7s\n", "hostile inputs: surface", "vectors", "right reason", "panics" }
  { printf "%-44s %9d %13d %7d\n", $1, $2, $3, $4; t += $2; r += $3; p += $4 }
  END { printf "%-44s %9d %13d %7d\n", "total", t, r, p }'
