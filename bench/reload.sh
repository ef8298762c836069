#!/usr/bin/env bash
# make bench-reload: baton's promise under a non-retrying load generator.
#
#  1. Overhead: wrk against examples/hello standalone, then against the same
#     hello as baton's only worker (baton is not in the data path: the
#     worker accepts on the socket baton holds). Prints the throughput ratio.
#  2. Reload under load: two wrk loads at once (keep-alive, and a new
#     connection per request) for DURATION while `baton reload` is asked for
#     every 100 ms. Prints requests, socket errors, non-2xx and reloads done.
#
# Loopback only; every run is bounded. Installs wrk from Debian if missing.
# Usage: bench/reload.sh [DURATION_SECONDS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
overhead_secs=${OVERHEAD_SECS:-10}

if ! command -v wrk >/dev/null; then
  echo "installing wrk..." >&2
  apt-get install -y wrk >/dev/null 2>&1 || { echo "bench: wrk is missing and could not be installed (apt-get install wrk)" >&2; exit 1; }
fi
t=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$t"; }
trap cleanup EXIT
go build -o "$t/baton" ./cmd/baton
go build -o "$t/hello" ./examples/hello
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
waitport() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
field() { # field FILE: "requests errors non2xx p50 p99"
  local req err non p50 p99
  req=$(grep -Eo '^ *[0-9]+ requests in' "$1" | grep -Eo '[0-9]+' || echo 0)
  err=$(grep 'Socket errors' "$1" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
  non=$(grep 'Non-2xx' "$1" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
  p50=$(awk '$1=="50%" {print $2}' "$1"); p99=$(awk '$1=="99%" {print $2}' "$1")
  echo "$req $err $non ${p50:--} ${p99:--}"
}

echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d)"
echo
echo "## overhead (${overhead_secs}s each, wrk -t1 -c32, keep-alive, two rounds alternating)"
declare -a alone under
for round in 1 2; do
  p=$(freeport)
  "$t/hello" -addr "127.0.0.1:$p" >/dev/null 2>&1 & hp=$!; pids+=($hp)
  waitport "$p"
  wrk -t1 -c32 -d${overhead_secs}s --latency "http://127.0.0.1:$p/" >"$t/alone$round.txt"
  kill -TERM $hp; wait $hp 2>/dev/null || true
  alone+=("$(rps "$t/alone$round.txt")")

  p=$(freeport)
  "$t/baton" run --name "bench$$" --control "$t/ctl.sock" -l "http=tcp://127.0.0.1:$p" -n 1 --ready notify -- "$t/hello" >"$t/baton-overhead.log" 2>&1 & bp=$!; pids+=($bp)
  waitport "$p"
  wrk -t1 -c32 -d${overhead_secs}s --latency "http://127.0.0.1:$p/" >"$t/under$round.txt"
  kill -TERM $bp; wait $bp 2>/dev/null || true
  under+=("$(rps "$t/under$round.txt")")
done
a=$(printf '%s\n' "${alone[@]}" | awk '{s+=$1} END {printf "%.0f", s/NR}')
u=$(printf '%s\n' "${under[@]}" | awk '{s+=$1} END {printf "%.0f", s/NR}')
echo "| setup | requests/s (rounds) | mean |"
echo "|---|---|---|"
echo "| hello standalone | ${alone[*]} | $a |"
echo "| hello as baton's worker (-n 1) | ${under[*]} | $u |"
echo "ratio under baton / standalone: $(awk -v a="$a" -v u="$u" 'BEGIN {printf "%.3f", u/a}')"
echo

echo "## reload every 100 ms under load (${secs}s, 2 workers, --ready notify)"
p=$(freeport)
"$t/baton" run --name "bench$$" --control "$t/ctl.sock" -l "http=tcp://127.0.0.1:$p" -n 2 --ready notify -- "$t/hello" >"$t/baton.log" 2>&1 & bp=$!; pids+=($bp)
waitport "$p"
wrk -t1 -c16 -d${secs}s --latency "http://127.0.0.1:$p/" >"$t/ka.txt" 2>&1 & w1=$!
wrk -t1 -c16 -d${secs}s --latency -H 'Connection: close' "http://127.0.0.1:$p/" >"$t/close.txt" 2>&1 & w2=$!
asked=0; end=$((SECONDS + secs))
while [ $SECONDS -lt $end ]; do
  "$t/baton" reload --no-wait --control "$t/ctl.sock" >/dev/null 2>&1 && asked=$((asked + 1))
  sleep 0.1
done
wait $w1 $w2
done_reloads=$("$t/baton" status --json --control "$t/ctl.sock" | python3 -c 'import json,sys; r=json.load(sys.stdin)["reloads"]; print(r["ok"], r["failed"])' 2>/dev/null || echo "? ?")
echo "| load | requests | socket errors | non-2xx | p50 | p99 |"
echo "|---|---|---|---|---|---|"
read -r r e n p50 p99 <<<"$(field "$t/ka.txt")";    echo "| keep-alive (wrk -c16) | $r | $e | $n | $p50 | $p99 |"
read -r r2 e2 n2 p50 p99 <<<"$(field "$t/close.txt")"; echo "| Connection: close (wrk -c16) | $r2 | $e2 | $n2 | $p50 | $p99 |"
read -r ok failed <<<"$done_reloads"
echo "reloads asked: $asked (every 100 ms, coalesced while one runs); completed: $ok ok, $failed failed"
total_err=$((e + n + e2 + n2))
echo
if [ "$total_err" -eq 0 ]; then echo "result: 0 errors"; else echo "result: $total_err errors"; grep -h -A3 'Socket errors' "$t/ka.txt" "$t/close.txt" || true; exit 1; fi
