#!/usr/bin/env bash
# Renders a lab report (meshfed scenario run ... --out DIR) in headless Chromium and saves a
# PNG screenshot, to check that the HTML opens in a browser and shows the run's charts.
#
#   scripts/screenshot-report.sh target/lab/failover.html target/lab/failover.png
#
# Needs Debian's chromium (apt-get install -y chromium); runs as root with --no-sandbox, with
# no network use (the report is self-contained: inline CSS and SVG, no scripts).
set -euo pipefail
report=${1:?usage: $0 REPORT.html OUT.png}
out=${2:?usage: $0 REPORT.html OUT.png}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "no chromium on PATH: apt-get install -y chromium" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1000,1100 \
  --screenshot="$(realpath -m "$out")" "file://$(realpath "$report")" >/dev/null 2>&1
test -s "$out"
echo "wrote $out"
