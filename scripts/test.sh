#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run): installs what the tests need, starts Ceph RGW for the S3
# tests and PostgreSQL for the server tests, runs every test project of Haven.slnx in Release, and ends with one line "N passed, N failed, N skipped".
# Exits with dotnet test's exit code.
#
# Works as root on a fresh Debian 12 machine with the .NET SDK, without a terminal. As another user, the Debian
# packages must be installed already.
#
# Environment: HAVEN_RGW_DIR (default /tmp/haven-rgw), HAVEN_RGW_PORT (default 17480), HAVEN_PG_DIR (default
# /tmp/haven-pg), HAVEN_PG_PORT (default 17432); extra arguments are passed
# to dotnet test (e.g. --filter "FullyQualifiedName~Storage").
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

# Debian packages the tests use; the Ceph packages are start-rgw.sh's business.
#   attr       getfattr/setfattr, to set and check extended attributes in backup/restore tests
#   e2fsprogs  mkfs.ext4, for file systems made in image files (disk-image and no-space tests)
#   xxd        hex dumps in test fixtures
#   curl       start-rgw.sh's readiness checks
#   qemu-utils qemu-img and qemu-io, NBD clients for the image export tests
#   fdisk      sfdisk, to make and check the partition tables of image tests
#   dosfstools mkfs.vfat and fsck.vfat, and mtools (mcopy), for the FAT image tests
#   xfsprogs   mkfs.xfs and xfs_repair, for the XFS image test
#   ntfs-3g    mkntfs, ntfsfix and the FUSE driver, for the NTFS image test
#   qemu-system-x86 linux-image-amd64 busybox-static lvm2 thin-provisioning-tools
#              a virtual machine with device-mapper for the LVM snapshot test (tests/vm/run.sh): this kernel has none
packages=(attr e2fsprogs xxd curl qemu-utils fdisk dosfstools mtools xfsprogs ntfs-3g qemu-system-x86 linux-image-amd64
          busybox-static lvm2 thin-provisioning-tools)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: missing Debian packages: ${missing[*]} (apt-get install ${missing[*]} as root)" >&2
    exit 1
  fi
  echo "test.sh: installing ${missing[*]}" >&2
  compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

rgw_dir=${HAVEN_RGW_DIR:-/tmp/haven-rgw}
rgw_port=${HAVEN_RGW_PORT:-17480}
results=$(mktemp -d /tmp/haven-test.XXXXXX)

# A gateway that was already running (a developer's) is reused and left running; one started here is stopped.
stop_rgw=1
if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$rgw_port/"; then
  stop_rgw=0
fi
cleanup() {
  if [ "$stop_rgw" = 1 ]; then
    bash scripts/stop-rgw.sh "$rgw_dir" >/dev/null 2>&1 || true
  fi
  rm -rf "$results"
}
trap cleanup EXIT

bash scripts/start-rgw.sh "$rgw_dir" "$rgw_port" >/dev/null
# shellcheck disable=SC1091
source "$rgw_dir/env"
export HAVEN_TEST_S3_ENDPOINT HAVEN_TEST_S3_ACCESS_KEY HAVEN_TEST_S3_SECRET_KEY
export HAVEN_REQUIRE_S3=1 # the S3 tests fail, instead of doing nothing, if the variables above go missing

# PostgreSQL for the server tests (the management database runs on SQLite and on PostgreSQL); left running.
HAVEN_TEST_PG=$(bash scripts/start-pg.sh "${HAVEN_PG_DIR:-/tmp/haven-pg}" "${HAVEN_PG_PORT:-17432}")
export HAVEN_TEST_PG

set +e
dotnet test Haven.slnx -c Release \
  --logger "console;verbosity=normal" \
  --blame-hang-timeout 15m \
  "$@" 2>&1 | tee "$results/output.log"
code=${PIPESTATUS[0]}
set -e

# Each test assembly ends with a summary: at normal verbosity a block
#   "Test Run Successful." (or "Test Run Failed.") / "Total tests: 247" / "Passed: 247" / "Failed: 0" / "Skipped: 0"
# and at minimal verbosity one line
#   "Passed!  - Failed:     0, Passed:   247, Skipped:     0, Total:   247, Duration: 9 s - Haven.Storage.Tests.dll"
# Add them up.
read -r passed failed skipped assemblies < <(
  sed -E 's/\x1b\[[0-9;]*m//g; s/\r$//' "$results/output.log" \
    | awk '
        /^Test Run (Successful|Failed|Aborted)/ { block = 1; a++; next }
        block && /^ *Passed: *[0-9]+ *$/  { p += $2 }
        block && /^ *Failed: *[0-9]+ *$/  { f += $2 }
        block && /^ *Skipped: *[0-9]+ *$/ { s += $2 }
        block && /^ *Total time:/         { block = 0 }
        /(Passed|Failed)! +- +Failed: +[0-9]+, +Passed: +[0-9]+, +Skipped: +[0-9]+/ {
          line = $0; gsub(/[^0-9,]/, " ", line); split(line, n, ",")
          f += n[1]; p += n[2]; s += n[3]; a++
        }
        END { printf "%d %d %d %d\n", p, f, s, a }')

if [ "$code" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "test.sh: dotnet test exited with $code although no test failed: a build error, or a test host that crashed (see above)"
fi
echo "test.sh: $assemblies test assemblies ran"
echo "$passed passed, $failed failed, $skipped skipped"
exit "$code"
