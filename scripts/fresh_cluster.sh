# Sourced by scripts that need a throw-away cluster (tests/test_cluster.sh, bench/finetune_sql.sh,
# bench/classify_vs_llamacpp.sh), from the repository root. With $work, $port and $db set: a fresh
# cluster in $work/data (pg_distill preloaded) whose fine-tuning jobs run in database $db, created
# empty, stopped when the script exits. psql_db DB ARGS... and psql_in ARGS... (in $db) run psql as
# postgres, quiet, unaligned, stopping on errors; extension_on_two_threads is the benchmarks' set-up
# (bench/finetune_sql.sh, bench/e2e_sql.sh).
root=$PWD
bash scripts/cluster.sh stop "$work/data" 2>/dev/null || true
rm -rf "$work" && install -d -o postgres -g postgres "$work"
bash scripts/cluster.sh start "$work/data" "$port" "$db"
trap 'bash "$root/scripts/cluster.sh" stop "$work/data"' EXIT
psql_db() { local d=$1; shift; sudo -u postgres psql -X -q -At -v ON_ERROR_STOP=1 -h "$work/data" -p "$port" -d "$d" "$@"; }
psql_in() { psql_db "$db" "$@"; }
psql_db postgres -c "CREATE DATABASE $db"
# The benchmarks' set-up: pg_distill in $db, sessions and workers on 2 threads each; the workers read
# distill.training_threads when they start, hence the restart.
extension_on_two_threads() {
  psql_in -c "CREATE EXTENSION pg_distill" -c "ALTER SYSTEM SET distill.training_threads = 2" \
          -c "ALTER SYSTEM SET distill.threads = 2"
  bash scripts/cluster.sh stop "$work/data" && bash scripts/cluster.sh start "$work/data" "$port" "$db"
}
