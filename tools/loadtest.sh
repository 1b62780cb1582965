#!/usr/bin/env bash
# Load test of `difforge serve` on loopback: 64 concurrent clients for 60 s (bounded in time and
# requests by wrk's -d), once with dynamic batching on and once off, against a trained model
# (default: the demo's runs/demo). Prints p50/p99 latency, images/s and the answers by status;
# fails if any request got a 5xx or a socket error.
#   usage: tools/loadtest.sh [RUN_DIR] [DURATION]        (needs wrk: apt-get install wrk)
#   MODES="true" runs only the batching one; EXTRA="feature_drift_every = 50" adds serve.toml lines.
set -euo pipefail
RUN=${1:-runs/demo}
DURATION=${2:-60s}
BIN=${BIN:-target/release/difforge}
CLIENTS=${CLIENTS:-64}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
export DIFFORGE_KEY=loadtest-key
echo "$DIFFORGE_KEY" > "$tmp/keys"
status=0
echo "| batching | requests answered | refused (429) | 5xx | p50 latency | p99 latency | images/s |"
echo "|---|---|---|---|---|---|---|"
for batching in ${MODES:-true false}; do
  printf 'batching = %s\nmax_batch = 8\nmax_wait_ms = 10\nqueue_capacity = 64\nrequest_timeout_ms = 60000\n%s\n' "$batching" "${EXTRA:-}" > "$tmp/serve.toml"
  "$BIN" serve --checkpoint "$RUN" --bind 127.0.0.1:0 --config "$tmp/serve.toml" --api-keys-file "$tmp/keys" > "$tmp/out" 2> "$tmp/err.$batching" &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$tmp/out" 2>/dev/null && break; sleep 0.2; done
  url=$(sed -n 's/^listening on //p' "$tmp/out")
  result=$(wrk -t2 -c"$CLIENTS" -d"$DURATION" --timeout 60s --latency -s tools/wrk_generate.lua "$url/v1/generate" | grep '^RESULT')
  kill -TERM "$pid"; wait "$pid" || true
  declare -A r=()
  for kv in ${result#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
  echo "| $batching | ${r[ok]} | ${r[refused_429]} | ${r[server_5xx]} | ${r[p50_ms]} ms | ${r[p99_ms]} ms | ${r[images_per_s]} |"
  if [ "${r[server_5xx]}" != 0 ] || [ "${r[socket_errors]}" != 0 ] || [ "${r[other]}" != 0 ]; then
    echo "FAILED with batching=$batching: $result" >&2; status=1
  fi
  unset r
done
exit $status
