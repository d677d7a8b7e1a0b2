#!/usr/bin/env bash
# A screenshot of a study's runs table in the MLflow UI, as a user opens it: `ser-study ui STUDY_DIR`, then a browser
# (headless Chromium, Debian's `chromium` package) on the URL it prints.
#
#   bash bench/mlflow_ui_screenshot.sh demo/study bench/results/mlflow_runs_view.png [PORT]
#
# Prints the URL it opened; exit 1 if the UI did not come up or the page did not render.
set -euo pipefail
study_dir=${1:?usage: $0 STUDY_DIR OUT.png [PORT]}
out=${2:?usage: $0 STUDY_DIR OUT.png [PORT]}
port=${3:-5077}
here=$(cd "$(dirname "$0")/.." && pwd)
ser_study=${SER_STUDY:-$here/.venv/bin/ser-study}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no Chromium found: apt-get install chromium" >&2; exit 1; }

log=$(mktemp)
setsid "$ser_study" ui "$study_dir" --port "$port" >"$log" 2>&1 &
ui=$!
trap 'kill -- -$ui 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { cat "$log" >&2; echo "the MLflow UI did not come up" >&2; exit 1; }
url=$(grep -o "http://127.0.0.1:$port/#/experiments/[0-9]*/runs[^ ]*" "$log" | head -1)
[ -n "$url" ] || { cat "$log" >&2; echo "ser-study ui printed no runs-view URL" >&2; exit 1; }
echo "opening $url"
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=2400,900 \
  --virtual-time-budget=15000 --screenshot="$out" "$url" >/dev/null 2>&1
[ -s "$out" ] || { echo "no screenshot written" >&2; exit 1; }
echo "screenshot: $out"
