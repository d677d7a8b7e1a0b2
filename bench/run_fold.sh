#!/usr/bin/env bash
# One fold of the method on the generated corpus with the tiny encoder, on this machine's CPU.
# Usage: bash bench/run_fold.sh [OUT_DIR]    (needs `make install`; writes OUT_DIR, default /tmp/ser-study-run-fold)
# Prints the wall time of each step and the fold's UA/WA; results are recorded in bench/results/run_fold.md.
set -euo pipefail
OUT=${1:-/tmp/ser-study-run-fold}
BIN=$(dirname "$0")/../.venv/bin
rm -rf "$OUT" && mkdir -p "$OUT"
step() { local start=$SECONDS; "$@"; echo "[bench] $(basename "$1") ${2:-}: $((SECONDS - start)) s" >&2; }
step "$BIN/ser-study" demo-data "$OUT/corpus" >/dev/null
step "$BIN/ser-study" prepare "$OUT/corpus" --out "$OUT/manifest.csv" >/dev/null
step "$BIN/ser-study" tiny-encoder "$OUT/encoder" --pretrain-on "$OUT/manifest.csv"
for FOLD in 1 2; do
  step "$BIN/ser-study" run-fold --data "$OUT/manifest.csv" --encoder "$OUT/encoder" --fold "$FOLD" --layer 2 --clusters 8 \
    --mask-ratio 0.2 --pooling attention --out "$OUT/fold$FOLD" --preset smoke
done
