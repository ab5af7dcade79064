#!/usr/bin/env bash
# Concurrent jobs: distill.workers = 2 trains two jobs at once, one thread each
# (distill.training_threads = 1).
#   1. a small job alone: its adapter is the reference;
#   2. a long job and the same small job again, trained at the same time (both IN_PROGRESS in two
#      worker processes); the long one is cancelled mid-way; the small one succeeds with an adapter
#      byte-identical to the solo run's (same rows, same seed, same threads);
#   3. the memory guard counts running jobs: with distill.max_training_memory set to hold one job's
#      estimate but not two, the second job waits (DESCRIBE shows data.waiting_for_memory) until the
#      first ends, then trains to SUCCESS.
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/pg_distill-jobs port=55444 db=distill_jobs
source tests/test_cluster.sh
fail() { echo "FAIL: $*" >&2; tail -20 "$work/data/server.log" >&2; exit 1; }
psql_in -c "ALTER SYSTEM SET distill.workers = 2" \
        -c "ALTER SYSTEM SET distill.training_threads = 1" -c "ALTER SYSTEM SET distill.threads = 1"
bash scripts/cluster.sh stop "$work/data" && bash scripts/cluster.sh start "$work/data" "$port" "$db"
for _ in $(seq 30); do
  n=$(psql_in -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_distill worker'")
  [ "$n" = 2 ] && break
  sleep 1
done
[ "$n" = 2 ] || fail "$n workers running, not 2"

small="SELECT request AS prompt, label AS completion FROM tickets ORDER BY id LIMIT 24"
small_opts='{"max_epochs": 1, "target_modules": ["q", "v"], "seed": 7}'
create() { psql_in -c "SELECT distill.finetune('CREATE', '$1', 'smollm2-135m', \$q\$$2\$q\$, NULL, '$3')"; }
wait_for() { psql_in -c "SET client_min_messages = warning" -c "SELECT distill.wait('$1', ${2:-900})->>'status'"; }
digest() { psql_in -c "SELECT md5(adapter) FROM distill.model_registry WHERE name = '$1'"; }

solo=$(create solo "$small" "$small_opts")
[ "$(wait_for "$solo")" = SUCCESS ] || fail "the solo job did not succeed"
estimate=$(psql_in -c "SELECT (distill.finetune('DESCRIBE', '$solo')->'data'->>'memory_estimate_mb')::int")
where=$(psql_in -c "SELECT d->>'device' || ' ' || (d->>'threads') FROM (SELECT distill.finetune('DESCRIBE', '$solo')->'data' d) x")
[ "$where" = "cpu 1" ] || fail "DESCRIBE says the job trained on '$where', not 'cpu 1' (device, threads)"
echo "ok: solo job, adapter $(digest solo), memory estimate $estimate MB, trained on $where thread"

long=$(create long "SELECT request AS prompt, label AS completion FROM tickets" '{"max_epochs": 3, "seed": 1}')
sleep 1
again=$(create again "$small" "$small_opts")
both=""
for _ in $(seq 120); do
  both=$(psql_in -c "SELECT count(DISTINCT worker_pid) FROM distill.job_registry WHERE id IN ('$long', '$again') AND status = 'IN_PROGRESS'")
  [ "$both" = 2 ] && break
  sleep 0.5
done
[ "$both" = 2 ] || fail "the two jobs never trained at the same time"
echo "ok: two jobs IN_PROGRESS at once in two workers"
# Cancel the long one once it has taken a step, while the small one still trains.
for _ in $(seq 240); do
  [ "$(psql_in -c "SELECT step > 0 FROM distill.job_registry WHERE id = '$long'")" = t ] && break
  sleep 0.5
done
psql_in -c "SELECT distill.finetune('CANCEL', '$long')->>'status'" >/dev/null
[ "$(wait_for "$long" 120)" = CANCELLED ] || fail "the long job was not cancelled"
[ "$(wait_for "$again")" = SUCCESS ] || fail "the small job did not succeed beside the cancelled one"
describe() { psql_in -c "SELECT distill.finetune('DESCRIBE', '$1')->'data' - 'labels'"; }
[ "$(digest again)" = "$(digest solo)" ] ||
  fail "the small job's adapter differs from the solo run's: solo $(describe "$solo"); again $(describe "$again")"
echo "ok: the long job CANCELLED; the other succeeded with the solo run's adapter, byte for byte"

# Memory for one job, not two.
limit=$((estimate * 3 / 2))
psql_in -c "ALTER SYSTEM SET distill.max_training_memory = '${limit}MB'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 2
first=$(create first "$small" "$small_opts")
for _ in $(seq 120); do
  [ "$(psql_in -c "SELECT data ? 'memory_estimate_mb' FROM distill.job_registry WHERE id = '$first'")" = t ] && break
  sleep 0.5
done
second=$(create second "$small" "$small_opts")
waited=""
for _ in $(seq 240); do
  waited=$(psql_in -c "SELECT data->>'waiting_for_memory' FROM distill.job_registry WHERE id = '$second'")
  [ -n "$waited" ] && break
  [ "$(psql_in -c "SELECT status FROM distill.job_registry WHERE id = '$first'")" = SUCCESS ] && break
  sleep 0.25
done
[ -n "$waited" ] || fail "the second job never waited for memory (limit ${limit} MB, estimate $estimate MB)"
echo "ok: the second job waited: $waited"
[ "$(wait_for "$first")" = SUCCESS ] && [ "$(wait_for "$second")" = SUCCESS ] || fail "the two jobs did not both succeed"
[ "$(psql_in -c "SELECT distill.finetune('DESCRIBE', '$second')->'data' ? 'waiting_for_memory'")" = f ] \
  || fail "the finished job still says it waits"
echo "ok: both succeeded, one after the other"
! grep -E "terminated by signal" "$work/data/server.log" || fail "a process crashed"
