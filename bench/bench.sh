#!/usr/bin/env bash
# make bench: baton side by side with nginx, HAProxy, spawn-fcgi and a naive
# restart, in one run on this machine. Never part of CI.
#
#  1. Reload under load. For each contender, two loads at once for SECS
#     (keep-alive, and a new connection per request; 16 connections each,
#     one thread each) while the contender is reloaded every 100 ms:
#       baton-shared     baton run -n 2 (one socket shared by the workers), baton reload --no-wait
#       baton-reuseport  the same with ?balance=reuseport   (when this build has it)
#       baton-upgrade    baton upgrade (which waits) every 100 ms  (when this build has it)
#       nginx            nginx -s reload (2 worker processes, return 200 "hello\n")
#       haproxy          master-worker (-W), SIGUSR2 to the master, which passes the
#                        listeners to each new worker (-x sockpair@N), nbthread 2
#       naive            examples/hello stopped (SIGTERM, wait for exit) and started
#     Each contender runs twice: once under wrk (the headline totals and
#     latencies), once under internal/loadgen (the same load shape, counted
#     every 50 ms: the chart).
#  2. Overhead. examples/hello standalone and as baton's only worker; and a
#     FastCGI hello (bench/fcgihello) behind nginx's fastcgi_pass, started by
#     spawn-fcgi and by baton --fd0. wrk, 32 connections, BENCH_ROUNDS (5)
#     short rounds alternating the setups, and the server side's CPU time
#     per answer, which other work on the machine disturbs less.
#  3. bench/chart draws docs/img/*.png and writes the tables into
#     docs/benchmarks.md between its "make bench" markers.
#
# Loopback only; every run is bounded; every process it starts is stopped
# on exit. Installs Debian's wrk, nginx, haproxy and spawn-fcgi when missing.
# Environment: BENCH_SECS (30), BENCH_OVERHEAD_SECS (6), BENCH_ROUNDS (5),
# BENCH_ONLY (space-separated names among baton-shared baton-reuseport
# baton-upgrade nginx haproxy naive overhead fastcgi; default all),
# BENCH_OUT (bench/results), BENCH_NO_DOCS=1 (leave docs/ alone; implied by
# BENCH_ONLY, since a partial run would drop the other sections), BENCH_REV
# (build baton and examples/hello from this commit, not the work tree).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${BENCH_SECS:-30}
osecs=${BENCH_OVERHEAD_SECS:-6}
rounds=${BENCH_ROUNDS:-5}
only=${BENCH_ONLY:-}
out=${BENCH_OUT:-bench/results}
every=100ms

log() { echo "bench: $*" >&2; }

# --- tools ---------------------------------------------------------------
declare -A missing=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing $2 (Debian)..."
    timeout 300 apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 \
      || { timeout 120 apt-get update >/dev/null 2>&1 && timeout 300 apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1; } || true
  fi
  command -v "$1" >/dev/null && return 0
  missing[$1]="$2 is not installed and could not be installed (apt-get install $2)"
  log "${missing[$1]}"
  return 1
}
export PATH="$PATH:/usr/sbin:/sbin"
need wrk wrk || { log "wrk is required"; exit 1; }
need nginx nginx || true
need haproxy haproxy || true
need spawn-fcgi spawn-fcgi || true

# --- scratch dir and cleanup ---------------------------------------------
t=$(mktemp -d /tmp/baton-bench.XXXXXX)
declare -a pids=()
cleanup() {
  # Every server runs in a process group of its own (setsid), so its
  # workers go with it: nginx and haproxy workers, spawn-fcgi's program.
  local p
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -TERM -- "-$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -KILL -- "-$p" 2>/dev/null || true; done
  rm -rf "$t"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building"
if [ -n "${BENCH_REV:-}" ]; then
  # baton and hello of one commit, whatever the work tree holds.
  mkdir "$t/src"
  git archive "$BENCH_REV" | tar -x -C "$t/src"
  (cd "$t/src" && go build -o "$t/baton" ./cmd/baton && go build -o "$t/hello" ./examples/hello)
  batonver=$(git rev-parse --short "$BENCH_REV")
else
  go build -o "$t/baton" ./cmd/baton
  go build -o "$t/hello" ./examples/hello
  batonver=$(git describe --always --dirty 2>/dev/null || echo unknown)
fi
go build -o "$t/fcgihello" ./bench/fcgihello
go build -o "$t/underload" ./bench/underload
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/*.json "$out"/*.txt

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 10000)); }
waitport() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; log "port $1 never opened"; return 1; }
stop_pid() { # stop_pid PID [SIGNAL]: signal, wait at most 10s, then SIGKILL its process group
  local p=$1 sig=${2:-TERM}
  kill -"$sig" "$p" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  forget "$p"
}
forget() { # forget PID: it is gone; never signal its (reusable) number again
  local q keep=()
  for q in "${pids[@]:-}"; do [ -n "$q" ] && [ "$q" != "$1" ] && keep+=("$q"); done
  pids=("${keep[@]:-}")
}
underload() { # in the background, so that a signal to this script ends it at once
  setsid "$t/underload" "$@" &
  local u=$!
  pids+=("$u")
  local rc=0
  wait "$u" || rc=$?
  forget "$u"
  return $rc
}
want() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }
unavailable() { echo "$1	$2" >>"$out/unavailable.txt"; log "$1: $2"; }

# --- what this baton build can do ----------------------------------------
has_balance=0; has_upgrade=0
"$t/baton" run --help 2>/dev/null | grep -q balance && has_balance=1
"$t/baton" upgrade --help >/dev/null 2>&1 && has_upgrade=1

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "kernel: $(uname -sr)"
  echo "go: $(go env GOVERSION)"
  echo "baton: $batonver"
  echo "wrk: $(dpkg-query -W -f '${Version}' wrk 2>/dev/null || echo '?')"
  echo "nginx: $(dpkg-query -W -f '${Version}' nginx 2>/dev/null || echo "${missing[nginx]:-?}")"
  echo "haproxy: $(dpkg-query -W -f '${Version}' haproxy 2>/dev/null || echo "${missing[haproxy]:-?}")"
  echo "spawn-fcgi: $(dpkg-query -W -f '${Version}' spawn-fcgi 2>/dev/null || echo "${missing[spawn-fcgi]:-?}")"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "seconds: $secs"
  echo "overhead seconds: $osecs"
  echo "rounds: $rounds"
  echo "rev: ${BENCH_REV:-}"
} >"$out/machine.txt"

# --- contenders ----------------------------------------------------------
# start_X PORT DIR: starts the contender on 127.0.0.1:PORT, sets $server
# (pid to stop) and $reload (the reload command, an array); stop_X stops it.

start_baton() { # start_baton PORT DIR QUERY
  local p=$1 d=$2 q=$3
  setsid "$t/baton" run --name "bench$$" --control "$d/ctl.sock" --log-level warn \
    -l "http=tcp://127.0.0.1:$p$q" -n 2 --ready notify -- "$t/hello" >>"$d/baton.log" 2>&1 &
  server=$!; pids+=("$server")
  reload=("$t/baton" reload --no-wait --control "$d/ctl.sock")
}
stop_baton() { # stop_baton DIR
  "$t/baton" status --json --control "$1/ctl.sock" >"$1/status.json" 2>/dev/null || true
  stop_pid "$server" TERM
}

start_nginx() { # start_nginx PORT DIR
  local p=$1 d=$2
  mkdir -p "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_shutdown_timeout 5s;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$p;
    location / { default_type text/plain; return 200 "hello\n"; }
  }
}
EOF
  setsid nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >>"$d/nginx.out" 2>&1 &
  server=$!; pids+=("$server")
  reload=(nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -s reload)
}
stop_nginx() { stop_pid "$server" QUIT; }

start_haproxy() { # start_haproxy PORT DIR
  local p=$1 d=$2
  cat >"$d/haproxy.cfg" <<EOF
global
  master-worker
  nbthread 2
  maxconn 8192
  pidfile $d/haproxy.pid
  stats socket $d/admin.sock mode 600 level admin expose-fd listeners
  hard-stop-after 5s
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
frontend hello
  bind 127.0.0.1:$p
  http-request return status 200 content-type text/plain string hello
EOF
  setsid haproxy -W -db -f "$d/haproxy.cfg" >>"$d/haproxy.log" 2>&1 &
  server=$!; pids+=("$server")
  reload=(kill -USR2 "$server")
}
stop_haproxy() { stop_pid "$server" USR1; }

# run_contender NAME: both tools, the contender started afresh for each.
run_contender() {
  local name=$1 kind q="" tool p d
  case $name in
    baton-shared) kind=baton; [ $has_balance = 1 ] && q="?balance=shared" ;;
    baton-reuseport) kind=baton; q="?balance=reuseport"
      [ $has_balance = 1 ] || { unavailable "$name" "not available in this build (baton run --help does not mention balance)"; return 0; } ;;
    baton-upgrade) kind=baton
      [ $has_upgrade = 1 ] || { unavailable "$name" "not available in this build (no baton upgrade command)"; return 0; } ;;
    nginx) kind=nginx; command -v nginx >/dev/null || { unavailable "$name" "${missing[nginx]}"; return 0; } ;;
    haproxy) kind=haproxy; command -v haproxy >/dev/null || { unavailable "$name" "${missing[haproxy]}"; return 0; } ;;
    naive) kind=naive ;;
  esac
  for tool in wrk loadgen; do
    p=$(freeport); d="$t/$name-$tool"; mkdir -p "$d"
    log "$name under $tool: ${secs}s, reload every $every, port $p"
    local args=(-name "$name" -addr "127.0.0.1:$p" -tool "$tool" -for "${secs}s" -every "$every"
      -interval 50ms -ka 16 -close 16 -out "$out/reload-$name-$tool.json")
    if [ $kind = naive ]; then
      underload "${args[@]}" -server-log "$d/hello.log" -restart -- "$t/hello" -addr "127.0.0.1:$p" \
        || log "$name under $tool failed"
      continue
    fi
    "start_$kind" "$p" "$d" "$q"
    if [ "$name" = baton-upgrade ]; then reload=("$t/baton" upgrade --control "$d/ctl.sock"); fi
    if waitport "$p"; then
      underload "${args[@]}" -cpu-pid "$server" -- "${reload[@]}" || log "$name under $tool failed"
    fi
    "stop_$kind" "$d"
    [ -f "$d/status.json" ] && cp "$d/status.json" "$out/reload-$name-$tool.status.json"
    for f in "$d"/*.log; do [ -s "$f" ] && tail -n 20 "$f" >"$out/reload-$name-$tool.$(basename "$f" .log).log.txt"; done
    sleep 1
  done
}

for c in baton-shared baton-reuseport baton-upgrade nginx haproxy naive; do
  want "$c" && run_contender "$c"
done

# --- overhead ------------------------------------------------------------
# order ROUND A B: "A B" in odd rounds, "B A" in even ones, so that what
# runs first in a round (a fresh wrk, the previous server's exit) favours
# neither setup.
order() { if [ $(($1 % 2)) = 1 ]; then echo "$2 $3"; else echo "$3 $2"; fi; }

overhead_round() { # overhead_round ROUND
  local r=$1 p d mode ka cl setup
  for mode in keep-alive close; do
    if [ $mode = keep-alive ]; then ka=32 cl=0; else ka=0 cl=32; fi
    local args=(-tool wrk -for "${osecs}s" -every 0 -ka $ka -close $cl)
    for setup in $(order "$r" standalone under-baton); do
      p=$(freeport); d="$t/ovh-$r-$mode"; mkdir -p "$d"
      log "overhead round $r $mode: hello $setup"
      if [ "$setup" = standalone ]; then
        setsid "$t/hello" -addr "127.0.0.1:$p" >/dev/null 2>&1 &
      else
        setsid "$t/baton" run --name "bench$$" --control "$d/ctl.sock" --log-level warn -l "http=tcp://127.0.0.1:$p" -n 1 --ready notify -- "$t/hello" >>"$d/baton.log" 2>&1 &
      fi
      server=$!; pids+=("$server")
      waitport "$p" && underload -name "hello-$setup" -addr "127.0.0.1:$p" -cpu-pid "$server" "${args[@]}" -out "$out/overhead-hello-$setup-$mode-r$r.json" || log "failed"
      stop_pid "$server" TERM
    done
  done
}

fcgi_round() { # fcgi_round ROUND: nginx -> fcgihello, under spawn-fcgi and under baton --fd0
  local r=$1 p f d who
  for who in $(order "$r" spawn-fcgi baton); do
    p=$(freeport); f=$(freeport); d="$t/fcgi-$r-$who"; mkdir -p "$d/tmp"
    if [ $who = spawn-fcgi ]; then
      setsid spawn-fcgi -n -a 127.0.0.1 -p "$f" -- "$t/fcgihello" >>"$d/fcgi.log" 2>&1 & fpid=$!
    else
      setsid "$t/baton" run --name "bench$$" --control "$d/ctl.sock" --log-level warn -l "fcgi=tcp://127.0.0.1:$f" --fd0 fcgi -n 1 --ready notify -- "$t/fcgihello" >>"$d/fcgi.log" 2>&1 & fpid=$!
    fi
    pids+=("$fpid")
    cat >"$d/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$p;
    location / {
      fastcgi_pass 127.0.0.1:$f;
      fastcgi_param REQUEST_METHOD \$request_method;
      fastcgi_param REQUEST_URI \$request_uri;
      fastcgi_param SCRIPT_NAME \$uri;
      fastcgi_param SERVER_PROTOCOL \$server_protocol;
      fastcgi_param SERVER_NAME \$server_name;
      fastcgi_param SERVER_PORT \$server_port;
      fastcgi_param REMOTE_ADDR \$remote_addr;
      fastcgi_param HTTP_HOST \$host;
    }
  }
}
EOF
    setsid nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >>"$d/nginx.out" 2>&1 & server=$!; pids+=("$server")
    log "overhead round $r fastcgi: nginx -> fcgihello under $who"
    if waitport "$f" && waitport "$p"; then
      underload -name "fcgi-$who" -addr "127.0.0.1:$p" -cpu-pid "$fpid" -tool wrk -for "${osecs}s" -every 0 -ka 32 -close 0 \
        -out "$out/overhead-fcgi-$who-keep-alive-r$r.json" || log "failed"
    fi
    stop_pid "$server" QUIT
    stop_pid "$fpid" TERM
  done
}

if want overhead; then
  for r in $(seq 1 "$rounds"); do overhead_round "$r"; done
fi
if want fastcgi; then
  if command -v spawn-fcgi >/dev/null && command -v nginx >/dev/null; then
    for r in $(seq 1 "$rounds"); do fcgi_round "$r"; done
  else
    unavailable fastcgi "${missing[spawn-fcgi]:-${missing[nginx]:-}}"
  fi
fi
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"

# --- chart and tables ----------------------------------------------------
if [ -n "$only" ] || [ "${BENCH_NO_DOCS:-}" = 1 ]; then
  log "docs/ left alone; draw with: (cd bench/chart && go run . -in $out -img DIR)"
else
  log "drawing the charts and writing docs/benchmarks.md"
  mkdir -p docs/img
  (cd bench/chart && go run . -in "$out" -img "$root/docs/img" -doc "$root/docs/benchmarks.md")
fi
log "raw results in $out"
