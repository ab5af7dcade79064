#!/usr/bin/env bash
# pg_regress over tests/sql/*.sql against tests/expected/*.out, on a fresh cluster with pg_distill
# preloaded. Needs the extension installed (cargo pgrx install). Usage: tests/regress.sh [test ...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PGBIN=/usr/lib/postgresql/15/bin
REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
work=/tmp/pg_distill-regress
port=55432
bash scripts/cluster.sh stop "$work/data" 2>/dev/null || true
rm -rf "$work" && install -d -o postgres -g postgres "$work"
# pg_regress runs as postgres: give it copies it can read and a place to write.
cp -r tests/sql tests/expected "$work/" && mkdir -p "$work/data-files" && cp data/support_tickets/*.csv "$work/data-files/"
chown -R postgres:postgres "$work"
# Fine-tuning jobs run in distill.database: the test database itself, made before pg_regress runs
# (--use-existing), since a worker connected to it would stop pg_regress from dropping it.
bash scripts/cluster.sh start "$work/data" $port distill_regress
trap 'bash "$root/scripts/cluster.sh" stop "$work/data"' EXIT
sudo -u postgres psql -X -q -h "$work/data" -p $port -d postgres -c "CREATE DATABASE distill_regress"
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=($(cd tests/sql && ls *.sql | sed 's/\.sql$//'))
cd "$work"
if ! sudo -u postgres PGDATAFILES="$work/data-files" "$REGRESS" --bindir=$PGBIN --host="$work/data" --port=$port \
     --inputdir="$work" --outputdir="$work" --dbname=distill_regress --use-existing "${tests[@]}"; then
  cat "$work/regression.diffs" >&2 || true
  exit 1
fi
