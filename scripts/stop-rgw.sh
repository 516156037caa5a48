#!/usr/bin/env bash
# Stops the Ceph daemons that scripts/start-rgw.sh started under DIR and deletes DIR.
#
#   scripts/stop-rgw.sh [DIR]        default: /tmp/haven-rgw
#
# Only the processes named in DIR/run/*.pid are signalled (TERM, then KILL after 10 s). Stopping what is not
# running succeeds.
set -euo pipefail

dir=${1:-${HAVEN_RGW_DIR:-/tmp/haven-rgw}}
[ -d "$dir" ] || exit 0

pids=()
for f in "$dir"/run/*.pid; do
  [ -f "$f" ] || continue
  pid=$(tr -dc '0-9' < "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && pids+=("$pid")
done

for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for _ in $(seq 1 20); do
  alive=()
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
  [ ${#alive[@]} -eq 0 ] && break
  sleep 0.5
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done

# Only delete a folder that start-rgw.sh made.
if [ -f "$dir/.haven-rgw" ]; then
  rm -rf "$dir"
fi
echo "stop-rgw: stopped ${#pids[@]} daemon(s) under $dir" >&2
