#!/usr/bin/env bash
# Concurrency: 8 sessions run complete() over one tuned model while a job trains (0 errors, outputs
# identical to one session's); two CREATEs racing for one name (one wins, one clear error); a model
# dropped while another session uses it (a clear error there, nothing else). Needs the extension
# installed (cargo pgrx install).
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/pg_distill-concurrency port=55434 db=distill_conc
source tests/test_cluster.sh
fail() { echo "FAIL: $*" >&2; exit 1; }

status=$(train_small shared)
echo "trained: $status"
[ "$status" = SUCCESS ] || fail "the shared model did not train"
psql_in <<SQL
-- A long job keeps the worker training while the sessions below run.
SELECT distill.finetune('CREATE', 'background', 'smollm2-135m',
       'SELECT request AS prompt, label AS completion FROM tickets', NULL, '{"max_epochs": 10}') AS job \gset
SQL

query="SET distill.weight_format = 'q8_0';
       SELECT string_agg(distill.complete('shared', request, '{\"max_tokens\": 6}'), ' | ' ORDER BY id)
       FROM (SELECT * FROM tickets ORDER BY id LIMIT 3) t"
expected=$(psql_in -c "$query")
echo "one session: $expected"
for _ in $(seq 60); do
  [ "$(psql_in -c "SELECT step > 0 FROM distill.job_registry WHERE model = 'background'")" = t ] && break
  sleep 1
done
[ "$(psql_in -c "SELECT status FROM distill.jobs WHERE model = 'background'")" = IN_PROGRESS ] || fail "the background job is not training"

for i in $(seq 8); do
  ( if psql_in -c "$query" >"$work/out.$i" 2>"$work/err.$i"; then echo 0; else echo 1; fi >"$work/rc.$i" ) &
done
wait
for i in $(seq 8); do
  [ "$(cat "$work/rc.$i")" = 0 ] || fail "session $i: $(cat "$work/err.$i")"
  [ "$(cat "$work/out.$i")" = "$expected" ] || fail "session $i answered differently: $(cat "$work/out.$i")"
done
echo "8 concurrent sessions while training: 0 errors, identical outputs"

# Two CREATEs racing for one name: the second waits for the first's transaction, then fails clearly.
race="BEGIN; SELECT distill.finetune('CREATE', 'raced', 'smollm2-135m', 'SELECT request AS prompt, label AS completion FROM tickets');
      SELECT pg_sleep(2); COMMIT;"
( if psql_in -c "$race" >"$work/race.1" 2>&1; then echo 0; else echo 1; fi >"$work/race.rc1" ) &
sleep 0.5
( if psql_in -c "$race" >"$work/race.2" 2>&1; then echo 0; else echo 1; fi >"$work/race.rc2" ) &
wait
[ "$(cat "$work/race.rc1")" = 0 ] || fail "first CREATE: $(cat "$work/race.1")"
[ "$(cat "$work/race.rc2")" != 0 ] || fail "second CREATE succeeded too"
grep -q 'model name "raced" is already taken by a pending fine-tuning job' "$work/race.2" || fail "second CREATE: $(cat "$work/race.2")"
[ "$(psql_in -c "SELECT count(*) FROM distill.jobs WHERE model = 'raced'")" = 1 ] || fail "two jobs queued"
echo "racing CREATEs: one job, one clear error"

# Dropping a model while another session runs it: that session gets a clear error, not a crash.
( if psql_in -c "SELECT count(distill.complete('shared', request, '{\"max_tokens\": 4}')) FROM tickets" \
    >"$work/drop.out" 2>&1; then echo 0; else echo 1; fi >"$work/drop.rc" ) &
sleep 3
psql_in -c "SELECT distill.drop_model('shared')" >/dev/null
wait
if [ "$(cat "$work/drop.rc")" = 0 ]; then
  echo "the using session finished before the drop took effect: $(cat "$work/drop.out")"
else
  grep -q 'model "shared" not found\|"shared" was dropped or replaced' "$work/drop.out" || fail "using session: $(cat "$work/drop.out")"
  echo "model dropped while in use: the using session got a clear error: $(head -1 "$work/drop.out")"
fi
[ "$(psql_in -c "SELECT 1")" = 1 ] || fail "server unreachable"
psql_in -c "SELECT distill.finetune('CANCEL', id) FROM distill.jobs WHERE status IN ('PENDING', 'IN_PROGRESS')" >/dev/null
grep -q "terminated by signal\|server process .* was terminated" "$work/data/server.log" && fail "a backend crashed (server.log)"
echo "concurrency: ok"
