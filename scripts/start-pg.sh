#!/usr/bin/env bash
# start-pg.sh DIR PORT — a throwaway PostgreSQL cluster for the tests: initdb into DIR (as user postgres, trust
# authentication, listening on 127.0.0.1:PORT only) unless it exists, then start it. Prints the connection string.
# Installs postgresql from Debian when the binaries are missing (root only).
set -euo pipefail
dir=${1:-/tmp/haven-pg}
port=${2:-17432}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "start-pg.sh: PostgreSQL is not installed (apt-get install postgresql as root)" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

run() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if ! run "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
    run "$bin/initdb" -D "$dir" -U postgres --auth=trust >/dev/null
  fi
  run "$bin/pg_ctl" -D "$dir" -l "$dir/log" -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" -w start >/dev/null
fi
echo "Host=127.0.0.1;Port=$port;Username=postgres;Database=postgres"
