#!/usr/bin/env bash
# run-comparison.sh — whole-program comparison of Haven with restic and Borg (see bench/README.md).
#
# Publishes haven once (Release, ReadyToRun when the SDK can get the crossgen package, else a plain publish),
# then runs the shared harness peers.sh on the data set: init, first backup, unchanged backup, backup after
# mkmod.py changes, restore into a fresh ext4 checked with `diff -r`, for haven, restic and borg.
#
# usage: bench/run-comparison.sh [-r REPS] [-t "TOOLS"] [-o OUTFILE] [-B] [DATASET]
#   REPS     full cycles per tool (default 3); peers.sh reports the median of each step
#   TOOLS    default "haven restic borg-lz4" (see peers.sh for borg-zstd3, borg-fixed)
#   OUTFILE  where the harness's output goes (default /tmp/haven-comparison-DATE.txt); peers.sh keeps its
#            CSV and per-step logs under /tmp/bench/results/
#   -B       do not publish; reuse $HAVEN_PUBLISH_DIR/haven
#   DATASET  default /tmp/bench/data, built by the harness's mkdata.sh
# env: BENCH_HARNESS (default: shared/bench beside the repository), HAVEN_PUBLISH_DIR (default /tmp/haven-publish),
#      QUIET_MAX (peers.sh: seconds to wait for a quiet machine before each step, default 240).
# Needs root (loop mounts for the restore file system) and: apt-get install -y restic borgbackup time bc.
# Nothing is written into the repository: build output goes to /tmp/haven-publish-artifacts, the binary to
# $HAVEN_PUBLISH_DIR. Builds take /tmp/haven-build.lock, like every build on the shared machines.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${BENCH_HARNESS:-$(cd "$ROOT/.." && pwd)/shared/bench}
PUBLISH=${HAVEN_PUBLISH_DIR:-/tmp/haven-publish}
ARTIFACTS=/tmp/haven-publish-artifacts
LOCK=/tmp/haven-build.lock
REPS=3
TOOLS="haven restic borg-lz4"
OUTFILE=/tmp/haven-comparison-$(date +%Y%m%d-%H%M%S).txt
BUILD=1
while getopts "r:t:o:B" o; do
  case $o in
    r) REPS=$OPTARG ;; t) TOOLS=$OPTARG ;; o) OUTFILE=$OPTARG ;; B) BUILD=0 ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
DATA=${1:-/tmp/bench/data}

fail() { echo "run-comparison: $*" >&2; exit 1; }
[ -x "$HARNESS/peers.sh" ] || fail "no harness at $HARNESS (set BENCH_HARNESS)"
[ -d "$DATA" ] || fail "no data set at $DATA: run $HARNESS/mkdata.sh first (root, ~5 GB under /tmp/bench)"
[ "$(id -u)" = 0 ] || echo "run-comparison: not root: restores go into a plain folder, not a fresh ext4" >&2
for t in $TOOLS; do
  case $t in
    restic) command -v restic >/dev/null || fail "restic is missing: apt-get install -y restic" ;;
    borg-*) command -v borg >/dev/null || fail "borg is missing: apt-get install -y borgbackup" ;;
  esac
done
[ -x /usr/bin/time ] || fail "/usr/bin/time is missing: apt-get install -y time"
command -v bc >/dev/null || fail "bc is missing: apt-get install -y bc"

publish_mode=reused
if [ "$BUILD" = 1 ]; then
  rm -rf "$PUBLISH"
  common=(publish "$ROOT/src/Haven.Cli" -c Release -o "$PUBLISH" --artifacts-path "$ARTIFACTS" -nologo)
  # ReadyToRun needs the crossgen2 package for this runtime from the package feed; without it, fall back.
  if flock "$LOCK" dotnet "${common[@]}" -r linux-x64 --self-contained false -p:PublishReadyToRun=true \
       > /tmp/haven-publish.log 2>&1; then
    publish_mode="ReadyToRun (linux-x64, framework-dependent)"
  else
    echo "run-comparison: ReadyToRun publish failed (see /tmp/haven-publish.log); publishing without it" >&2
    tail -5 /tmp/haven-publish.log >&2
    rm -rf "$PUBLISH"
    flock "$LOCK" dotnet "${common[@]}" > /tmp/haven-publish-plain.log 2>&1 \
      || { tail -20 /tmp/haven-publish-plain.log >&2; fail "publish failed (see /tmp/haven-publish-plain.log)"; }
    publish_mode="plain (JIT only)"
  fi
fi
[ -x "$PUBLISH/haven" ] || fail "no haven binary at $PUBLISH/haven"

{
  echo "# Haven comparison $(date -Iseconds)"
  echo "haven: $PUBLISH/haven, publish: $publish_mode"
  echo "source: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
  echo "peers: $(restic version 2>/dev/null | head -1); $(borg --version 2>/dev/null)"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "data: $DATA, $(find "$DATA" -type f | wc -l) files, $(du -sh "$DATA" | cut -f1)"
  echo
} | tee "$OUTFILE"

rc=0
HAVEN_BIN=$PUBLISH/haven "$HARNESS/peers.sh" -r "$REPS" -t "$TOOLS" "$DATA" 2>&1 | tee -a "$OUTFILE" || rc=$?
echo "output: $OUTFILE" >&2
exit "$rc"
