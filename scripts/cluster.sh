#!/usr/bin/env bash
# A throw-away PostgreSQL cluster run by the postgres user with pg_distill preloaded.
#   scripts/cluster.sh start DIR PORT [DB]   (initdb if DIR is new, then start; fine-tuning jobs run in DB)
#   scripts/cluster.sh stop DIR
set -euo pipefail
BIN=/usr/lib/postgresql/15/bin
cmd=$1 dir=$2
as_pg() { sudo -u postgres "$@"; }
case "$cmd" in
  start)
    port=$3
    if [ ! -f "$dir/PG_VERSION" ]; then
      install -d -o postgres -g postgres -m 700 "$dir"
      as_pg "$BIN/initdb" -D "$dir" -A trust -U postgres --no-instructions >/dev/null
      cat >>"$dir/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_distill'
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
max_worker_processes = 16
CONF
    fi
    db=${4:-postgres}
    sed -i '/^distill\.database/d' "$dir/postgresql.conf"
    echo "distill.database = '$db'" >>"$dir/postgresql.conf"
    as_pg "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w start >/dev/null
    ;;
  stop)
    [ -f "$dir/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true
    ;;
  *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
