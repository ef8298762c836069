#!/usr/bin/env bash
# make bench-balance: how evenly 4 workers share new connections, shared
# socket vs one SO_REUSEPORT socket per slot, side by side in one run.
# wrk opens a new connection per request (Connection: close), so every
# request is one accept; each worker's count comes from baton status
# (X_BATON_ACCEPTED, counted by baton's library in the worker).
# Usage: bench/balance.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
workers=4
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null 2>&1 || { echo "bench: needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench: needs python3 to read baton status --json" >&2; exit 1; }
t=$(mktemp -d)
bp=
cleanup() { [ -n "$bp" ] && kill -TERM "$bp" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$t"; }
trap cleanup EXIT
go build -o "$t/baton" ./cmd/baton
go build -o "$t/hello" ./examples/hello

echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d); $workers workers of examples/hello; wrk -t2 -c64 -d${secs}s -H 'Connection: close'"
echo
echo "| balance | requests/s | accepted per worker | busiest / least busy |"
echo "|---|---|---|---|"
for mode in shared reuseport; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$t/baton" run --control "$t/ctl.sock" -l "http=tcp://127.0.0.1:$port?balance=$mode" -n $workers --ready notify -- "$t/hello" >"$t/baton-$mode.log" 2>&1 &
  bp=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
  wrk -t2 -c64 -d${secs}s -H 'Connection: close' "http://127.0.0.1:$port/" >"$t/wrk-$mode.txt"
  sleep 1 # the workers report their counts twice a second
  "$t/baton" status --json --control "$t/ctl.sock" >"$t/status-$mode.json"
  kill -TERM $bp; wait $bp 2>/dev/null || true; bp=
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$t/wrk-$mode.txt")
  python3 - "$t/status-$mode.json" "$mode" "$rps" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
counts = sorted((w["slot"], w.get("accepted", 0)) for w in st["workers"])
vals = [c for _, c in counts]
total = sum(vals) or 1
shares = ", ".join(f"slot {s}: {c} ({100*c/total:.0f}%)" for s, c in counts)
ratio = max(vals) / max(min(vals), 1)
print(f"| {sys.argv[2]} | {sys.argv[3]} | {shares} | {ratio:.2f} |")
PY
done
