#!/usr/bin/env bash
# Endpoints against a real OpenAI-compatible server that no one here wrote: llama-cpp-python's server
# serving the default GGUF, with tests/endpoint/fault_server.py in front of it for the faults (a hang,
# 429 then 200, 500, malformed JSON, a closed connection, a wrong key). On a fresh cluster:
#   1. tests/endpoint/endpoints.sql against tests/endpoint/expected/endpoints.out: every form of
#      complete() on an endpoint, count_tokens, evaluate, usage, complete_rows, the faults as clear
#      errors, the privileges (who may create, use, alter, grant) and the key never shown;
#   2. the same prompts give the same greedy text through the endpoint as llama.cpp gives directly
#      (tests/endpoint/direct_reply.py, same sampling settings);
#   3. query cancel and statement_timeout stop a hung request within a second, the backend alive;
#   4. 429 then 200 is one retried call (the fault server's counters);
#   5. no key in the server log, in pg_dump's output or in any output of the tests;
#   6. tests/endpoint/distill_flow.sql: the distillation flow, teacher to student.
# The first run on a machine compiles llama-cpp-python (scripts/llama_cpp_wheel.sh caches the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/pg_distill-endpoints port=55441 db=distill_endpoints
source scripts/fresh_cluster.sh
servers=$work/servers
cleanup() {
  bash "$root/tests/endpoint/servers.sh" stop "$servers" || true
  bash "$root/scripts/cluster.sh" stop "$work/data"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -20 "$work/data/server.log" >&2; exit 1; }
mkdir -p "$servers" && bash tests/endpoint/servers.sh start "$servers"
llama=$(cat "$servers/llama.port") fault=$(cat "$servers/fault.port") key=$(cat "$servers/fault.key")
wrong_key=sk-wrong-key-9f8e7d6c5b4a39281706 admin_key=sk-admin-inline-5e4d3c2b1a
stats() { python3 -c "import json, sys, urllib.request; print(json.load(urllib.request.urlopen('http://127.0.0.1:$fault/_stats')).get(sys.argv[1], 0))" "$1"; }
psql_in -c "CREATE EXTENSION pg_distill"
# The tickets the flow labels, readable by the server.
cp data/support_tickets/train.csv data/support_tickets/test.csv "$work/" && chown postgres "$work"/*.csv

echo "-- 1. endpoints.sql"
out=$work/endpoints.out
before_429=$(stats 429once)
sudo -u postgres psql -X -a -q -h "$work/data" -p "$port" -d "$db" -v llama="$llama" -v fault="$fault" \
  -v key="$key" -v wrong_key="$wrong_key" -v admin_key="$admin_key" -f tests/endpoint/endpoints.sql >"$out" 2>&1 || true
diff -u tests/endpoint/expected/endpoints.out "$out" >"$work/endpoints.diff" \
  || { cat "$work/endpoints.diff" >&2; fail "endpoints.sql differs from its expected output (above)"; }
echo "ok: endpoints.sql as expected"
# endpoints.sql asks the 429once endpoint once: refused with Retry-After: 1, then answered.
[ $(( $(stats 429once) - before_429 )) -eq 2 ] || fail "429 then 200 took $(( $(stats 429once) - before_429 )) requests, not 2"
echo "ok: 429 then 200 is one call, retried once"

echo "-- 2. greedy text through the endpoint = llama.cpp directly"
prompts='["Say hello", "What is the capital of France?", "Classify this support ticket: my data is slow since yesterday."]'
direct=$(echo "$prompts" | tests/endpoint/.venv/bin/python tests/endpoint/direct_reply.py \
  --model models/SmolLM2-135M-Instruct.Q4_1.gguf --max-tokens 24 --repeat-penalty 1.0)
via=$(psql_in -c "SELECT pg_catalog.json_agg(distill.complete('greedy', p, '{\"max_tokens\": 24}') ORDER BY n)
                  FROM pg_catalog.json_array_elements_text('$prompts') WITH ORDINALITY AS a(p, n)")
python3 - "$direct" "$via" <<'PY'
import json, sys
direct, via = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for d, v in zip(direct, via):
    print(f"  llama.cpp: {d!r}\n  endpoint:  {v!r}")
assert direct == via and len(direct) == 3, "the endpoint's greedy text differs from llama.cpp's"
PY
echo "ok: the same greedy text"

echo "-- 3. cancel and statement_timeout stop a hung request within a second"
hang="SELECT distill.complete('hang_long', 'hi')"
start=$(date +%s%N)
msg=$(psql_in -c "SET statement_timeout = '1s'" -c "$hang" 2>&1 || true)
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[[ "$msg" == *"canceling statement due to statement timeout"* ]] || fail "statement_timeout: $msg"
[ "$ms" -lt 2000 ] || fail "statement_timeout of 1 s took $ms ms"
echo "ok: statement_timeout 1 s: ERROR after $ms ms"
psql_in -c "SET application_name = 'hang_test'" -c "$hang" >"$work/cancel.out" 2>&1 &
client=$!
for _ in $(seq 50); do
  pid=$(psql_in -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'hang_test' AND state = 'active'")
  [ -n "$pid" ] && break
  sleep 0.1
done
[ -n "$pid" ] || fail "the hung call never started"
sleep 0.5
start=$(date +%s%N)
psql_in -c "SELECT pg_cancel_backend($pid)" >/dev/null
wait $client || true
ms=$(( ($(date +%s%N) - start) / 1000000 ))
grep -q "canceling statement due to user request" "$work/cancel.out" || fail "cancel: $(cat "$work/cancel.out")"
[ "$ms" -lt 1000 ] || fail "the cancel took $ms ms"
echo "ok: pg_cancel_backend: ERROR after $ms ms"
[ "$(psql_in -c "SELECT distill.complete('greedy', 'Say hello', '{\"max_tokens\": 2}') IS NOT NULL")" = t ] || fail "server not answering"
echo "ok: the server answers after the cancels"

echo "-- 4. distill_flow.sql"
flow=$work/distill_flow.out
sudo -u postgres psql -X -a -q -h "$work/data" -p "$port" -d "$db" -v llama="$llama" -v datadir="$work" \
  -f tests/endpoint/distill_flow.sql >"$flow" 2>&1 || true
grep -v '^psql:.*NOTICE:' "$flow" >"$flow.filtered"
diff -u tests/endpoint/expected/distill_flow.out "$flow.filtered" >"$work/flow.diff" \
  || { cat "$work/flow.diff" >&2; fail "distill_flow.sql differs from its expected output (above)"; }
psql_in -c "SELECT 'teacher labels: ' || pg_catalog.count(*) || ' rows, ' || pg_catalog.count(DISTINCT label) || ' distinct labels; teacher vs human labels on the test rows: ' || (SELECT pg_catalog.round(pg_catalog.avg((t.label = h.label)::int), 3) FROM teacher_labels t JOIN tickets_test h USING (id)) FROM teacher_labels"
psql_in -c "SELECT 'student: agreement with the teacher on held-out rows ' || (agreement->>'accuracy') || ', accuracy on human labels ' || (human->>'accuracy') FROM flow_results"
echo "ok: distill_flow.sql as expected"

echo "-- 5. no key anywhere"
sudo -u postgres pg_dump -h "$work/data" -p "$port" -d "$db" >"$work/dump.sql"
# The keys reach SQL as psql variables, so none is in the echoed script text either.
for k in "$key" "$wrong_key" "$admin_key"; do
  for f in "$work/data/server.log" "$work/dump.sql" "$out" "$flow" "$work/cancel.out"; do
    ! grep -qF "$k" "$f" || fail "a key appears in $f"
  done
done
grep -q "endpoint_registry" "$work/dump.sql" || fail "pg_dump did not dump the endpoints"
echo "ok: no key in the server log, pg_dump's output or the tests' outputs"
! grep -E "terminated by signal|server process .* was terminated" "$work/data/server.log" || fail "a backend crashed"
echo "ok: no backend crashed"
