#!/usr/bin/env bash
# Renders an HTML report (difforge eval --report, difforge explain ... report) in headless
# Chromium (Debian's chromium package) and saves a full-page screenshot, to check that every
# embedded image is present.
#   usage: tools/screenshot_report.sh REPORT_HTML OUT_PNG [WIDTH,HEIGHT]
set -euo pipefail
HTML=$(realpath "$1")
OUT=$2
SIZE=${3:-1000,3500}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$OUT")"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$tmp/profile" --window-size="$SIZE" \
  --screenshot="$OUT" "file://$HTML" 2>/dev/null
echo "screenshot: $OUT"
