#!/usr/bin/env bash
# Publishes the release build of haven: self-contained (no .NET runtime needed on the machine) and compiled ahead of
# time as one composite ReadyToRun image of Haven and the framework together, so that generic code shared across
# assemblies needs no JIT at start. On the image restore benchmark this took 0.87 of the framework-dependent
# ReadyToRun build's time (docs/benchmarks.md). The binary is OUT/haven (default /tmp/haven-release/haven); build
# output stays outside the repository.
# usage: scripts/publish-release.sh [OUT]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/haven-release}
rm -rf "$out"
dotnet publish "$root/src/Haven.Cli" -c Release -r linux-x64 --self-contained true \
  -p:PublishReadyToRun=true -p:PublishReadyToRunComposite=true \
  -o "$out" --artifacts-path "${out}-artifacts" -nologo
echo "publish-release: $out/haven"
