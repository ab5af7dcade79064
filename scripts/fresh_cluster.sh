# Sourced by scripts that need a throw-away cluster (tests/test_cluster.sh, bench/finetune_sql.sh,
# bench/classify_vs_llamacpp.sh), from the repository root. With $work, $port and $db set: a fresh
# cluster in $work/data (pg_distill preloaded) whose fine-tuning jobs run in database $db, created
# empty, stopped when the script exits. psql_db DB ARGS... and psql_in ARGS... (in $db) run psql as
# postgres, quiet, unaligned, stopping on errors.
root=$PWD
bash scripts/cluster.sh stop "$work/data" 2>/dev/null || true
rm -rf "$work" && install -d -o postgres -g postgres "$work"
bash scripts/cluster.sh start "$work/data" "$port" "$db"
trap 'bash "$root/scripts/cluster.sh" stop "$work/data"' EXIT
psql_db() { local d=$1; shift; sudo -u postgres psql -X -q -At -v ON_ERROR_STOP=1 -h "$work/data" -p "$port" -d "$d" "$@"; }
psql_in() { psql_db "$db" "$@"; }
psql_db postgres -c "CREATE DATABASE $db"
