#!/usr/bin/env bash
# Faults: a panic inside the training engine (job ERROR, same worker serves the next job); kill -9 of
# the training worker (the cluster restarts as Postgres does, the job is requeued, other models are
# intact); fast shutdown while training (under 5 s, job requeued). Needs the extension installed.
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/pg_distill-faults port=55435 db=distill_faults
BIN=/usr/lib/postgresql/15/bin
source tests/test_cluster.sh
fail() { echo "FAIL: $*" >&2; tail -20 "$work/data/server.log" >&2; exit 1; }
worker_pid() { psql_in -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_distill worker'"; }
long_job() {
  psql_in -c "SELECT distill.finetune('CREATE', '$1', 'smollm2-135m',
      'SELECT request AS prompt, label AS completion FROM tickets', NULL, '{\"max_epochs\": 10}')"
}
wait_job() { psql_in -c "SET client_min_messages = warning; SELECT distill.wait('$1')->>'status'"; }
wait_step() {
  for _ in $(seq 120); do
    [ "$(psql_in -c "SELECT step >= 1 FROM distill.job_registry WHERE id = '$1'")" = t ] && return 0
    sleep 1
  done
  fail "job $1 never started training"
}
wait_ready() {
  for _ in $(seq 60); do
    psql_in -c "SELECT 1" >/dev/null 2>&1 && return 0
    sleep 1
  done
  fail "server did not come back"
}

job=$(small_job keeper)
[ "$(wait_job "$job")" = SUCCESS ] || fail "keeper did not train"
keeper="SET distill.weight_format = 'q8_0'; SELECT distill.complete('keeper', 'My bill has roaming fees', '{\"max_tokens\": 6}')"
before=$(psql_in -c "$keeper")

# 1. A panic in the engine: the job ends in ERROR with the panic's message; the worker lives on.
pid=$(worker_pid)
psql_in -c "ALTER SYSTEM SET distill.inject_fault = 'training_panic'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
job=$(small_job panics)
[ "$(wait_job "$job")" = ERROR ] || fail "the panicking job did not end in ERROR"
psql_in -c "SELECT error FROM distill.jobs WHERE id = '$job'" | grep -q "internal error in the training engine: injected fault" \
  || fail "error: $(psql_in -c "SELECT error FROM distill.jobs WHERE id = '$job'")"
psql_in -c "ALTER SYSTEM RESET distill.inject_fault" -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
job=$(small_job after_panic)
[ "$(wait_job "$job")" = SUCCESS ] || fail "the worker did not train after a panic"
[ "$(worker_pid)" = "$pid" ] || fail "the worker was replaced after the panic"
echo "panic in the engine: job ERROR, same worker (pid $pid) trained the next job"

# 2. kill -9 of the training worker: Postgres restarts the cluster; the job is requeued and
#    trains again (attempt 2); the registry and other models are intact.
job=$(long_job killed)
wait_step "$job"
kill -9 "$(worker_pid)"
sleep 2
wait_ready
for _ in $(seq 60); do
  [ "$(psql_in -c "SELECT attempts = 2 AND status = 'IN_PROGRESS' FROM distill.job_registry WHERE id = '$job'")" = t ] && break
  sleep 1
done
[ "$(psql_in -c "SELECT attempts FROM distill.job_registry WHERE id = '$job'")" = 2 ] || fail "the killed job was not requeued"
[ "$(psql_in -c "$keeper")" = "$before" ] || fail "the keeper model answers differently after the crash"
grep -q "terminated by signal 9" "$work/data/server.log" || fail "no crash in the log?"
echo "kill -9 mid-job: cluster restarted, job requeued (attempt 2), other models intact"

# 3. Fast shutdown while training: under 5 s; the job is back in the queue afterwards.
wait_step "$job"
start=$(date +%s%N)
sudo -u postgres "$BIN/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "fast shutdown while training took ${ms} ms"
[ "$ms" -lt 5000 ] || fail "fast shutdown took ${ms} ms"
bash scripts/cluster.sh start "$work/data" $port distill_faults
wait_ready
status=$(psql_in -c "SELECT status FROM distill.job_registry WHERE id = '$job'")
case "$status" in PENDING|IN_PROGRESS) ;; *) fail "after shutdown the job is $status" ;; esac
psql_in -c "SELECT distill.finetune('CANCEL', '$job')" >/dev/null
[ "$(wait_job "$job")" = CANCELLED ] || fail "cancel after restart"
echo "faults: ok"
