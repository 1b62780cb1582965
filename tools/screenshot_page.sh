#!/usr/bin/env bash
# Opens the server's web page in headless Chromium (Debian's chromium package), lets it
# generate an image (the page's ?autorun=1), and saves a screenshot.
#   usage: tools/screenshot_page.sh [RUN_DIR] [OUT_PNG]
set -euo pipefail
RUN=${1:-runs/demo}
OUT=${2:-docs/serve-page.png}
BIN=${BIN:-target/release/difforge}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
echo "page-key" > "$tmp/keys"
"$BIN" serve --checkpoint "$RUN" --bind 127.0.0.1:0 --api-keys-file "$tmp/keys" > "$tmp/out" 2>/dev/null &
for _ in $(seq 100); do grep -q listening "$tmp/out" 2>/dev/null && break; sleep 0.2; done
url=$(sed -n 's/^listening on //p' "$tmp/out")
mkdir -p "$(dirname "$OUT")"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$tmp/profile" --window-size=900,700 --virtual-time-budget=20000 \
  --screenshot="$OUT" "$url/?autorun=1&key=page-key&class=7" 2>/dev/null
echo "screenshot: $OUT"
