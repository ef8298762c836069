#!/usr/bin/env bash
# Runs every go test -fuzz target in the module for a bounded time each.
# Usage: scripts/fuzz.sh [FUZZTIME]   (default 20s)
# FUZZTIME is a duration (20s) or a count of executions (30000x). CI uses a
# count: with a duration, Go 1.26's fuzz coordinator can fail a target with
# a bare "context deadline exceeded" when the time runs out on a busy
# machine, with nothing found (go.dev/issue/75804, fixed in Go 1.27).
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-20s}
grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
  pkg=./$(dirname "${f#./}")
  for fn in $(grep -oE '^func Fuzz[A-Za-z0-9_]+' "$f" | awk '{print $2}'); do
    echo "== $pkg $fn ($t)"
    go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$t" "$pkg"
  done
done
