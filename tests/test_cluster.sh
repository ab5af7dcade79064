# Sourced by the tests that need a cluster of their own (dump_restore.sh, faults.sh, concurrency.sh).
# With $work, $port and $db set: a fresh cluster in $work/data whose fine-tuning jobs run in $db,
# stopped when the test exits; $db holds pg_distill and the training tickets in table `tickets`.
# psql_db DB ARGS... and psql_in ARGS... (in $db) run psql as postgres, quiet, unaligned, stopping on errors.
root=$PWD
bash scripts/cluster.sh stop "$work/data" 2>/dev/null || true
rm -rf "$work" && install -d -o postgres -g postgres "$work"
bash scripts/cluster.sh start "$work/data" "$port" "$db"
trap 'bash "$root/scripts/cluster.sh" stop "$work/data"' EXIT
psql_db() { local d=$1; shift; sudo -u postgres psql -X -q -At -v ON_ERROR_STOP=1 -h "$work/data" -p "$port" -d "$d" "$@"; }
psql_in() { psql_db "$db" "$@"; }
psql_db postgres -c "CREATE DATABASE $db"
cp data/support_tickets/train.csv "$work/train.csv" && chown postgres "$work/train.csv"
psql_in -c "CREATE EXTENSION pg_distill" -c "CREATE TABLE tickets (id text, request text, label text)" \
        -c "COPY tickets FROM '$work/train.csv' WITH (FORMAT csv, HEADER true)"
