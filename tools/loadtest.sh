#!/usr/bin/env bash
# Load test of `difforge serve` on loopback: 64 concurrent clients for 60 s (bounded in time and
# requests by wrk's -d), once with dynamic batching on and once off, against a trained model
# (default: the demo's runs/demo). Prints p50/p99 latency, images/s and the answers by status;
# fails if any request got a 5xx or a socket error. Then the abandoned-work case: 3 requests that
# time out (504) followed by 50 normal ones, each of which must be answered 200 within its own
# timeout, and a SIGTERM during abandoned work, after which the server must exit within
# shutdown_timeout_ms + 2 s.
#   usage: tools/loadtest.sh [RUN_DIR] [DURATION]        (needs wrk and curl: apt-get install wrk curl)
#   MODES="true" runs only the batching one, MODES="abandoned" only the last case;
#   EXTRA="feature_drift_every = 50" adds serve.toml lines.
set -euo pipefail
RUN=${1:-runs/demo}
DURATION=${2:-60s}
BIN=${BIN:-target/release/difforge}
CLIENTS=${CLIENTS:-64}
command -v curl >/dev/null || { echo "curl is needed: apt-get install curl" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
export DIFFORGE_KEY=loadtest-key
echo "$DIFFORGE_KEY" > "$tmp/keys"
status=0
# Starts the server with serve.toml = $1; sets pid and url.
start_server() {
  printf '%s\n' "$1" > "$tmp/serve.toml"
  : > "$tmp/out"
  "$BIN" serve --checkpoint "$RUN" --bind 127.0.0.1:0 --config "$tmp/serve.toml" --api-keys-file "$tmp/keys" > "$tmp/out" 2> "$tmp/err.$2" &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$tmp/out" 2>/dev/null && break; sleep 0.2; done
  url=$(sed -n 's/^listening on //p' "$tmp/out")
}

# POSTs body $1; prints "STATUS SECONDS".
generate() {
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "Authorization: Bearer $DIFFORGE_KEY" -d "$1" "$url/v1/generate"
}

abandoned_work() {
  local timeout_ms=5000 shutdown_ms=3000 endless='{"n": 64, "steps": 1000}' normal='{"steps": 4}'
  start_server "$(printf 'max_steps = 1000\nmax_images = 64\nrequest_timeout_ms = %s\nshutdown_timeout_ms = %s\n' $timeout_ms $shutdown_ms)" abandoned
  local failed=0 slowest=0
  for i in 1 2 3; do
    read -r code _ < <(generate "$endless")
    [ "$code" = 504 ] || { echo "abandoned request $i: $code, expected 504" >&2; failed=1; }
  done
  for i in $(seq 50); do
    read -r code seconds < <(generate "$normal")
    slowest=$(awk -v a="$slowest" -v b="$seconds" 'BEGIN { print (b > a) ? b : a }')
    [ "$code" = 200 ] || { echo "normal request $i after the abandoned ones: $code" >&2; failed=1; }
  done
  generate "$endless" > /dev/null &
  sleep 0.5
  local start_ns=$(date +%s%N)
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
  local exit_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  wait "$pid" || true
  echo "abandoned work: 3 requests timed out; 50 normal ones after them, slowest ${slowest} s (timeout $((timeout_ms / 1000)) s); exit ${exit_ms} ms after SIGTERM (shutdown_timeout_ms $shutdown_ms)"
  if [ "$failed" != 0 ] || [ "$exit_ms" -gt $((shutdown_ms + 2000)) ]; then
    echo "FAILED: abandoned work" >&2; status=1
  fi
}

if [ "${MODES:-}" = abandoned ]; then abandoned_work; exit $status; fi
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
echo "| batching | requests answered | refused (429) | 5xx | p50 latency | p99 latency | images/s |"
echo "|---|---|---|---|---|---|---|"
for batching in ${MODES:-true false}; do
  start_server "$(printf 'batching = %s\nmax_batch = 8\nmax_wait_ms = 10\nqueue_capacity = 64\nrequest_timeout_ms = 60000\n%s' "$batching" "${EXTRA:-}")" "$batching"
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
[ -z "${MODES:-}" ] && abandoned_work
exit $status
