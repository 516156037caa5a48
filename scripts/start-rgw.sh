#!/usr/bin/env bash
# Starts a throwaway, single-node Ceph cluster with a RADOS Gateway (S3) on 127.0.0.1, for tests.
#
#   scripts/start-rgw.sh [DIR] [PORT]        defaults: /tmp/haven-rgw 17480
#
# What it runs: one monitor, one manager and one OSD whose object store lives in memory (memstore), with
# cephx switched off, plus radosgw listening on 127.0.0.1:PORT. Everything it writes is under DIR; the data
# is gone when the OSD stops. The S3 user has fixed test keys (below), printed at the end and written to
# DIR/env as shell exports (HAVEN_TEST_S3_ENDPOINT/_ACCESS_KEY/_SECRET_KEY) for `source`.
#
# Idempotent: when an S3 endpoint already answers on PORT and accepts the test keys, it is reused as it is.
# Installs the Debian packages it needs when they are missing (needs root then).
# Stop with scripts/stop-rgw.sh [DIR].
#
# Environment: HAVEN_RGW_MON_PORT (default PORT+1), HAVEN_RGW_MEMSTORE_BYTES (default 4 GiB: the OSD holds
# every object in RAM, and pages only what is stored).
set -euo pipefail

dir=${1:-${HAVEN_RGW_DIR:-/tmp/haven-rgw}}
port=${2:-${HAVEN_RGW_PORT:-17480}}
mon_port=${HAVEN_RGW_MON_PORT:-$((port + 1))}
memstore_bytes=${HAVEN_RGW_MEMSTORE_BYTES:-4294967296}
access_key=HAVENTESTACCESSKEY01
secret_key=havenTestSecretKey0123456789abcdefghijkl
endpoint="http://127.0.0.1:$port"
started=$SECONDS

say() { echo "start-rgw: $*" >&2; }
die() { say "error: $*"; exit 1; }

write_env() {
  mkdir -p "$dir"
  cat > "$dir/env" <<ENV
export HAVEN_TEST_S3_ENDPOINT=$endpoint
export HAVEN_TEST_S3_ACCESS_KEY=$access_key
export HAVEN_TEST_S3_SECRET_KEY=$secret_key
ENV
}

# True when something answers HTTP on the port at all.
answers() { curl -s -o /dev/null --max-time 2 "$endpoint/"; }

# True when the endpoint accepts a SigV4-signed ListBuckets with the test keys.
keys_work() {
  # S3 wants the payload hash signed too; curl 7.88 leaves it out unless the header is given.
  curl -sf -o /dev/null --max-time 5 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access_key:$secret_key" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" "$endpoint/"
}

install_packages() {
  local need=()
  command -v radosgw >/dev/null || need+=(radosgw)
  command -v ceph-mon >/dev/null || need+=(ceph-mon)
  command -v ceph-osd >/dev/null || need+=(ceph-osd)
  command -v ceph-mgr >/dev/null || need+=(ceph-mgr)
  command -v uuidgen >/dev/null || need+=(uuid-runtime)
  command -v curl >/dev/null || need+=(curl)
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages (${need[*]}) and not root to install them"
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Package lists are often absent on a fresh machine: update once, and once more if the install fails
  # because the lists are stale.
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    apt-get update -qq
  fi
  if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

create_user() {
  radosgw-admin -c "$dir/ceph.conf" user info --uid=haven-test >/dev/null 2>&1 && return 0
  radosgw-admin -c "$dir/ceph.conf" user create --uid=haven-test --display-name="Haven tests" \
    --access-key="$access_key" --secret="$secret_key" >/dev/null
}

wait_until() { # wait_until SECONDS WHAT COMMAND...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || die "$what did not happen within ${limit}s (logs: $dir/log)"
    sleep 0.5
  done
}

if command -v curl >/dev/null && answers; then
  if ! keys_work && [ -f "$dir/ceph.conf" ]; then
    create_user
    wait_until 30 "the test user becoming usable" keys_work
  fi
  keys_work || die "something on 127.0.0.1:$port answers but does not accept the test keys; pick another port"
  write_env
  say "reusing the S3 endpoint already running at $endpoint"
  echo "$endpoint"
  exit 0
fi

install_packages

# Leftovers of an earlier run in the same folder (daemons that lost their gateway, old maps) go first.
if [ -d "$dir" ]; then
  bash "$(dirname "$0")/stop-rgw.sh" "$dir" >/dev/null 2>&1 || true
fi
rm -rf "$dir"
mkdir -p "$dir"/{mon-a,osd-0,mgr-x,rgw,run,log}
touch "$dir/.haven-rgw" # marks the folder as ours, so stop-rgw.sh may delete it

fsid=$(uuidgen)
cat > "$dir/ceph.conf" <<CONF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
public_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
ms_client_mode = crc
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
run_dir = $dir/run
log_file = $dir/log/\$name.log
admin_socket = $dir/run/\$name.asok
pid_file = $dir/run/\$name.pid
[mon]
mon_data = $dir/mon-\$id
[osd]
osd_data = $dir/osd-\$id
osd_objectstore = memstore
memstore_device_bytes = $memstore_bytes
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
[mgr]
mgr_data = $dir/mgr-\$id
[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:$port
rgw_data = $dir/rgw
CONF

conf=(-c "$dir/ceph.conf")
monmaptool --create --add a "v2:127.0.0.1:$mon_port" --fsid "$fsid" "$dir/monmap" >/dev/null
ceph-mon "${conf[@]}" --mkfs -i a --monmap "$dir/monmap"
ceph-mon "${conf[@]}" -i a
timeout 60 ceph "${conf[@]}" osd create >/dev/null
ceph-osd "${conf[@]}" -i 0 --mkfs >/dev/null 2>&1
ceph "${conf[@]}" osd crush add-bucket localhost host >/dev/null 2>&1
ceph "${conf[@]}" osd crush move localhost root=default >/dev/null 2>&1
ceph "${conf[@]}" osd crush add osd.0 1.0 host=localhost >/dev/null 2>&1
ceph-osd "${conf[@]}" -i 0 >/dev/null 2>&1
ceph-mgr "${conf[@]}" -i x
radosgw "${conf[@]}" -n client.rgw.a

wait_until 90 "radosgw answering on $endpoint" answers
create_user
wait_until 30 "the test user becoming usable" keys_work
write_env
say "radosgw ready at $endpoint in $((SECONDS - started))s (keys in $dir/env)"
echo "$endpoint"
