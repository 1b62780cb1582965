#!/usr/bin/env bash
# The shapes judge on a VAE's reconstructions: how often colour, kind, size, position and
# background survive the VAE. Writes the reconstructions (posterior means, through the run's
# exported vae/ folder) of the first N validation images of a finished `difforge vae train` run
# (its config's split) as PNG files with the originals' captions beside them, then runs
# `difforge data judge` on them.
#
#   tools/judge_vae_reconstructions.sh RUN_DIR OUT_DIR [N (200)] [-- extra `data judge` args]
#
# Both steps are the binary $DIFFORGE (default target/release/difforge, else target/debug/difforge):
# `difforge vae reconstruct`, then `difforge data judge`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
run=$1 out=$2 n=200
shift 2
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then n=$1; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
[ -f "$run/vae/config.json" ] || { echo "$run: not a finished VAE run (no vae/config.json)" >&2; exit 1; }
rm -rf "$out"
difforge=${DIFFORGE:-target/release/difforge}
[ -x "$difforge" ] || difforge=target/debug/difforge
"$difforge" vae reconstruct --run "$run" --out "$out" --n "$n" >&2
manifest=()
data=$(sed -n 's/^path = "\(.*\)"$/\1/p' "$run/config.toml" | head -1)
[ -n "$data" ] && [ -f "$data/shapes.json" ] && manifest=(--manifest "$data/shapes.json")
"$difforge" data judge "$out" "${manifest[@]}" "$@"
