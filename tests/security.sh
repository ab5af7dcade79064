#!/usr/bin/env bash
# Security: an attacker's regression suite. Needs the extension installed; run as root (it starts its
# own cluster on port 55437, as tests/faults.sh does, and reads backends' /proc entries). Roles:
# alice (a victim), mallory (the attacker) and carol, LOGIN members of distill_trainer; viewer, of
# distill_user only; nobody, with neither; "Public", a role whose name looks like the keyword.
#
#   1  superuser through search_path: mallory's schema `mal` shadows pg_catalog functions and
#      operators (tests/security/mal.sql) with bodies that ALTER ROLE mallory SUPERUSER when they run
#      as a superuser; she drives every elevated path (CREATE, SHOW, DESCRIBE, CANCEL, wait, grants,
#      drop, export/import, complete & co., the views, a job's whole life in the worker) under
#      search_path = mal, public, pg_catalog. She must end as she started, with no event logged.
#   2  superuser through the worker: a training query that set_config()s search_path,
#      statement_timeout, default_transaction_read_only and application_name (is_local false); the
#      job finishes, the next job succeeds, the worker is not called 'pwned'.
#   3  leaky functions over distill.jobs / models / usage (security_barrier): mallory's NOTICEs
#      never show alice's rows (model names, job ids, an error text with a secret).
#   4  grant_model(m, 'Public') grants to the role "Public", not to PUBLIC; 'public' does.
#   5  squatting: mallory's tuned model "squat_base" loses to a base file squat_base.gguf added later
#      (complete() gives the base model's reply), and CREATE / import_adapter refuse base names.
#   6  worker hog: a job stuck in pg_sleep(600) in its training query is CANCELLED by its owner within
#      10 s and the worker trains the next job.
#   7  queue flood: the 4th unfinished job of a role is refused (53400); other roles are not blocked.
#   8  memory bombs, peak RSS of the attacking backend (VmHWM after `echo 5 > clear_refs`):
#      (a) 12 MB inputs to count_tokens / complete / chat / classify: 54000, < 150 MB;
#      (b) choices with a 200-token choice and scores: works, < 300 MB;
#      (c) zip bombs (1.1 GiB of zeros in ~1 MB, the true size declared or a lie): refused, < 200 MB;
#      (d) wrong tensor shapes (consistent, or declaring gigabytes absent from the file): refused;
#      (e) NaN / Inf weights: refused, "non-finite"; (f) distill.max_training_rows ends a job in
#      ERROR; (g) choice-list limits (1000 choices, 1024 bytes, 256 tokens).
#   9  70 kB training / validation / evaluate queries: 54000 before anything runs.
#  10  statement_timeout and pg_cancel_backend stop complete() and evaluate() within 2 s.
#  11  disclosure: errors about missing models do not show distill.model_dir; an ungranted model
#      gives permission denied without naming its owner; another role's job reads as missing.
#  12  endpoints: a grantee drives every endpoint path under the look-alike search_path and can
#      neither create, alter, grant, drop nor read keys; an ungranted endpoint is invisible (also to a
#      leaky function over distill.endpoints); an endpoint admin may not take a key from the server's
#      environment or files; the key never shows.
#  Also: the roles (nobody / viewer refused what they lack), the limit settings are superuser-only,
#  and the per-role limits max_models_per_role, max_jobs_per_role, max_adapter_bytes, max_input_bytes.
#
# After every check the server must answer SELECT 1 with the postmaster start time it had at the
# start (never restarted) and server.log must show no crashed backend. Each check prints
# "ok - WHAT" or "not ok - WHAT: DETAIL"; lines starting with "#" are measurements and notes; the last
# line is "N passed, M failed" and the exit status is non-zero when M > 0.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
here=$PWD
work=/tmp/pg_distill-security port=55437 db=distill_security

# ---- the cluster (tests/test_cluster.sh: pg_distill preloaded, jobs run in $db, table tickets) ----
source tests/test_cluster.sh
model_files=()
cleanup() {
  local f
  for f in "${model_files[@]}"; do rm -f -- "$f"; done
  bash "$here/scripts/cluster.sh" stop "$work/data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
if ! psql_in -c "SELECT 1 FROM pg_extension WHERE extname = 'pg_distill'" 2>/dev/null | grep -qx 1; then
  echo "not ok - set-up: the test cluster with pg_distill did not start (see $work/data/server.log)"
  echo "0 passed, 1 failed"
  exit 1
fi

# ---- helpers ----------------------------------------------------------------------------------------
TQ="SELECT request AS prompt, label AS completion FROM tickets ORDER BY id LIMIT 16"
TINY='{"max_epochs": 1, "target_modules": ["q", "v"], "learning_rate": 0.005}'
MAL_PRE="SET search_path = mal, public, pg_catalog;
SET client_min_messages = warning;"
WARM="SELECT length(distill.complete('smollm2-135m', 'hi', '{\"max_tokens\": 1}')) AS warm \\gset"
LONG_PROMPT="repeat('The quick brown fox jumps over the lazy dog. ', 150)"
MEMSH=$work/mem.sh MEMLOG=$work/mem.log
cat >"$MEMSH" <<'EOF'
# mem.sh reset|peak LABEL: appends "reset|peak LABEL VmRSS VmHWM" (kB) of backend $PID to $MEMLOG.
# reset first writes 5 to clear_refs, which sets VmHWM back to VmRSS (Linux >= 4.0).
if [ "$1" = reset ]; then echo 5 >"/proc/$PID/clear_refs" 2>/dev/null || echo "noreset $2" >>"$MEMLOG"; fi
awk -v l="$1 $2" '/^VmRSS/ {r = $2} /^VmHWM/ {h = $2} END {print l, r, h}' "/proc/$PID/status" >>"$MEMLOG"
EOF
: >"$MEMLOG" && : >"$work/mal_sessions.err"
chown postgres "$MEMSH" "$MEMLOG"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
flat() { tr '\n' ' ' <<<"$1" | sed 's/  */ /g' | cut -c1-600; }
note() { echo "# $*"; }
# psql_as ROLE [ARGS]: psql as ROLE in $db (trust auth over the socket), quiet, unaligned, errors in
# verbose form (with their SQLSTATE), stopping at the first error; at most $T seconds (default 180).
psql_as() {
  local role=$1; shift
  timeout -k 5 "${T:-180}" sudo -u postgres psql -X -q -At -v ON_ERROR_STOP=1 -v VERBOSITY=verbose \
    -v tq="$TQ" -v tiny="$TINY" -h "$work/data" -p "$port" -d "$db" -U "$role" "$@"
}
# q ROLE [ARGS] [<<SQL]: sets OUT, ERR, RC and STATE (the first error's SQLSTATE; 00000 when none).
q() {
  local role=$1; shift
  psql_as "$role" "$@" >"$work/q.out" 2>"$work/q.err"
  RC=$?
  OUT=$(cat "$work/q.out") ERR=$(cat "$work/q.err")
  STATE=$(grep -oE '(ERROR|FATAL): +[0-9A-Z]{5}:' <<<"$ERR" | head -n1 | sed -E 's/.* ([0-9A-Z]{5}):$/\1/')
  if [ $RC -eq 0 ]; then STATE=${STATE:-00000}; elif [ -z "$STATE" ]; then STATE="psql-exit-$RC"; fi
  return $RC
}
first_error() { grep -m1 -E 'ERROR|FATAL' <<<"$ERR" | sed 's/^psql:[^ ]* //'; }
# calls ROLE PREAMBLE [LABEL SQL]...: one session as ROLE; errors do not stop it. After each SQL the
# output gets "STATE LABEL <sqlstate>" and "MSG LABEL <message of the last error>". With MEM=1 the
# backend's peak RSS is reset before and recorded after each SQL (mem_growth LABEL). CV: extra psql
# arguments. Both are cleared after the call.
CV=() MEM=0
calls() {
  local role=$1 pre=$2 f=$work/calls.sql; shift 2
  {
    echo '\set ON_ERROR_STOP 0'
    if [ "$MEM" = 1 ]; then
      echo 'SELECT pg_backend_pid() AS backend_pid \gset'
      echo '\setenv PID :backend_pid'
      echo "\\setenv MEMLOG $MEMLOG"
    fi
    printf '%s\n' "$pre"
    while [ $# -ge 2 ]; do
      if [ "$MEM" = 1 ]; then echo "\\! sh $MEMSH reset $1"; fi
      printf '%s\n' "$2"
      printf '\\echo STATE %s :SQLSTATE\n\\echo MSG %s :LAST_ERROR_MESSAGE\n' "$1" "$1"
      if [ "$MEM" = 1 ]; then echo "\\! sh $MEMSH peak $1"; fi
      shift 2
    done
  } >"$f"
  if [ "$MEM" = 1 ]; then : >"$MEMLOG"; fi
  q "$role" "${CV[@]}" <"$f"
  local rc=$?
  CV=() MEM=0
  return $rc
}
st() { awk -v l="$1" '$1 == "STATE" && $2 == l {s = $3} END {print s}' <<<"$OUT"; }
msg() { grep "^MSG $1 " <<<"$OUT" | tail -n1 | cut -d' ' -f3-; }
# expect LABEL SQLSTATE...: the call LABEL ended with one of them (ERR: any error but a cancel or an
# internal error); otherwise appends to BAD.
BAD=""
expect() {
  local l=$1 got s; shift
  got=$(st "$l")
  for s in "$@"; do
    [ "$got" = "$s" ] && return 0
    [ "$s" = ERR ] && [ -n "$got" ] && [ "$got" != 00000 ] && [ "$got" != 57014 ] && [ "$got" != XX000 ] && return 0
  done
  BAD+="$l: ${got:-no result} (expected $*; $(msg "$l")); "
  return 1
}
# mem_growth LABEL: MB between the RSS at reset and the peak after the call (empty when unknown).
mem_growth() {
  local r0 h0 h1
  read -r _ _ r0 h0 < <(grep "^reset $1 " "$MEMLOG" | tail -n1)
  read -r _ _ _ h1 < <(grep "^peak $1 " "$MEMLOG" | tail -n1)
  [ -n "${r0:-}" ] && [ -n "${h1:-}" ] || return 0
  if grep -qx "noreset $1" "$MEMLOG"; then r0=$h0; fi
  echo $(((h1 - r0) / 1024))
}
# mem_under LABEL MB: the call's peak growth is known and under MB; notes it; else appends to BAD.
mem_under() {
  local g; g=$(mem_growth "$1")
  grep -qx "noreset $1" "$MEMLOG" && note "$1: clear_refs refused; growth is over the session's earlier peak"
  note "memory: $1 peak +${g:-?} MB (limit $2 MB)"
  [ -n "$g" ] && [ "$g" -lt "$2" ] && return 0
  BAD+="$1: peak RSS +${g:-unknown} MB, limit $2 MB; "
  return 1
}
job_status() { psql_as postgres -c "SELECT status FROM distill.job_registry WHERE id = '$1'" 2>/dev/null; }
job_error() { psql_as postgres -c "SELECT error FROM distill.job_registry WHERE id = '$1'" 2>/dev/null; }
wait_job() {  # wait_job ID [SECONDS]: the job's final status (or why there is none)
  local s=${2:-240}
  [ -n "$1" ] || { echo "no job"; return; }
  T=$((s + 30)) q postgres -c "SET client_min_messages = warning" -c "SELECT distill.wait('$1', $s)->>'status'"
  if [ $RC -eq 0 ]; then tail -n1 <<<"$OUT"; else echo "wait failed: $(first_error)"; fi
}
cancel_su() { [ -z "$1" ] || psql_as postgres -c "SELECT distill.finetune('CANCEL', '$1')" >/dev/null 2>&1; }
# forget NAME...: drops models and cancels unfinished jobs of these names (as superuser).
forget() {
  local n
  for n in "$@"; do
    psql_as postgres >/dev/null 2>&1 <<SQL
SELECT distill.finetune('CANCEL', id) FROM distill.job_registry WHERE model = '$n' AND status IN ('PENDING', 'IN_PROGRESS');
SELECT distill.drop_model(name) FROM distill.model_registry WHERE name = '$n';
SQL
  done
}
# create_job ROLE NAME QUERY [PREAMBLE]: queues a tiny job as ROLE; JOB is its id (empty on failure).
create_job() {
  JOB=""
  q "$1" -v name="$2" -v query="$3" <<SQL
${4:-}
SELECT distill.finetune('CREATE', :'name', 'smollm2-135m', :'query', NULL, :'tiny');
SQL
  local rc=$?
  [ $rc -eq 0 ] && JOB=$(tail -n1 <<<"$OUT")
  return $rc
}
worker_wait_event() {
  psql_as postgres -c "SELECT coalesce(wait_event, '-') FROM pg_stat_activity WHERE backend_type = 'pg_distill worker'" 2>/dev/null | head -n1
}
set_guc() {  # set_guc NAME VALUE|RESET: ALTER SYSTEM (superuser) and reload
  if [ "$2" = RESET ]; then q postgres -c "ALTER SYSTEM RESET distill.$1" -c "SELECT pg_reload_conf()"
  else q postgres -c "ALTER SYSTEM SET distill.$1 = $2" -c "SELECT pg_reload_conf()"; fi
  local rc=$?
  sleep 1
  return $rc
}

START=""
# server_problem: empty when the server answers with its original start time and no backend crashed.
server_problem() {
  local now
  now=$(T=20 psql_as postgres -c "SELECT 1, pg_postmaster_start_time()" 2>&1)
  [ "${now%%|*}" = 1 ] || { echo "server unreachable: $(flat "$now")"; return; }
  [ "$now" = "$START" ] || { echo "server restarted (${START#*|} -> ${now#*|})"; return; }
  local crash
  crash=$(grep -E "terminated by signal|terminated by exception|all server processes terminated" "$work/data/server.log" | tail -n1)
  [ -z "$crash" ] || echo "server.log: $(flat "$crash")"
}
passed=0 failed=0
# check WHAT FUNCTION [ARGS]: runs one attack; FUNCTION returns non-zero with DETAIL set on failure and
# may set INFO (shown on the ok line). Then the server must still be the one it was.
check() {
  local name=$1 rc why d; shift
  DETAIL="" INFO="" BAD=""
  "$@"
  rc=$?
  why=$(server_problem)
  if [ $rc -eq 0 ] && [ -z "$why" ]; then
    echo "ok - $name${INFO:+ ($(flat "$INFO"))}"
    passed=$((passed + 1))
  else
    d=""
    [ $rc -eq 0 ] || d=${DETAIL:-${BAD:-failed}}
    echo "not ok - $name: $(flat "$d${why:+${d:+; }$why}")"
    failed=$((failed + 1))
  fi
}

# The zip bombs take a few seconds to deflate: made while the first attacks run.
mkdir -p "$work/adapters"
python3 tests/security/adapters.py bombs "$work/adapters" >"$work/bombs.log" 2>&1 &
bombs_pid=$!

# ---- set-up ---------------------------------------------------------------------------------------
setup() {
  q postgres <<SQL || { DETAIL="roles: $(first_error)"; return 1; }
CREATE ROLE alice LOGIN;
CREATE ROLE mallory LOGIN;
CREATE ROLE carol LOGIN;
CREATE ROLE viewer LOGIN;
CREATE ROLE nobody LOGIN;
CREATE ROLE "Public";
GRANT distill_trainer TO alice, mallory, carol;
GRANT distill_user TO viewer;
GRANT SELECT ON tickets TO alice, mallory, carol, viewer, nobody;
GRANT CREATE ON DATABASE $db TO mallory;
-- Where roles leave adapters for each other (alice's export, the hostile archives).
CREATE TABLE public.blobs (name text PRIMARY KEY, data bytea NOT NULL);
GRANT SELECT, INSERT ON public.blobs TO alice, mallory;
SQL
  q mallory <tests/security/mal.sql || { DETAIL="tests/security/mal.sql: $(first_error)"; return 1; }
  INFO=$(tail -n1 <<<"$OUT")
  local skipped; skipped=$(grep -c 'skipped' <<<"$ERR")
  [ "$skipped" -eq 0 ] || { note "mal.sql skipped $skipped look-alikes:"; grep 'skipped' <<<"$ERR" | sed 's/^/#   /'; }
  # The setting may say $sharedir (README "Settings"): the installation's share directory.
  MODEL_DIR=$(psql_in -c "SHOW distill.model_dir")
  MODEL_DIR=${MODEL_DIR//\$sharedir/$(/usr/lib/postgresql/15/bin/pg_config --sharedir)}
  [ -n "$MODEL_DIR" ] && [ -d "$MODEL_DIR" ] || { DETAIL="model directory '$MODEL_DIR' not found"; return 1; }
  START=$(psql_as postgres -c "SELECT 1, pg_postmaster_start_time()")
}
START=$(psql_as postgres -c "SELECT 1, pg_postmaster_start_time()")
MODEL_DIR=""
check "set-up: roles, grants, mallory's look-alike schema mal" setup

# The jobs, in queue order: mallory's hog (6), alice's model (6, 3, 4, 5, 8, 11), alice's failing job
# with a secret in its error (3), mallory's job created under the look-alike search_path (1),
# mallory's set_config job (2), and carol's plain job that must follow it (2).
SETCFG_Q="SELECT request AS prompt, label AS completion FROM tickets
WHERE pg_catalog.set_config('search_path', 'mal, public, pg_catalog', false) IS NOT NULL
  AND pg_catalog.set_config('statement_timeout', '1', false) IS NOT NULL
  AND pg_catalog.set_config('default_transaction_read_only', 'on', false) IS NOT NULL
  AND pg_catalog.set_config('application_name', 'pwned', false) IS NOT NULL
ORDER BY id LIMIT 16"
SECRET_Q="SELECT ('SECRET_alice_91731 ' || request)::int::text AS prompt, label AS completion FROM tickets"
HOG="" ACME="" SECRET_JOB="" EVIL="" SETCFG="" AFTER=""
queue() {
  local bad=""
  create_job mallory mal_hog "SELECT pg_sleep(600)::text AS prompt, 'x'::text AS completion" && HOG=$JOB || bad+="mal_hog: $(first_error); "
  create_job alice acme_tickets "$TQ" && ACME=$JOB || bad+="acme_tickets: $(first_error); "
  create_job alice acme_secret "$SECRET_Q" && SECRET_JOB=$JOB || bad+="acme_secret: $(first_error); "
  create_job mallory mal_evil "$TQ" "$MAL_PRE" && EVIL=$JOB || bad+="mal_evil: $(first_error); "
  cat "$work/q.err" >>"$work/mal_sessions.err"
  create_job mallory mal_setcfg "$SETCFG_Q" && SETCFG=$JOB || bad+="mal_setcfg: $(first_error); "
  create_job carol carol_after "$TQ" && AFTER=$JOB || bad+="carol_after: $(first_error); "
  [ -z "$bad" ] || { DETAIL=$bad; return 1; }
}
check "set-up: the attacks' jobs are queued (one created under search_path mal)" queue

# ---- 6. worker hog ------------------------------------------------------------------------------------
attack_6_cancel() {
  [ -n "$HOG" ] || { DETAIL="no hog job"; return 1; }
  local i s="" we="" t0 ms pid0
  for i in $(seq 300); do
    s=$(job_status "$HOG"); [ "$s" = IN_PROGRESS ] && break; sleep 0.2
  done
  [ "$s" = IN_PROGRESS ] || { DETAIL="the job never started (status $s)"; return 1; }
  for i in $(seq 100); do
    we=$(worker_wait_event); [ "$we" = PgSleep ] && break; sleep 0.2
  done
  [ "$we" = PgSleep ] || note "the worker was never seen in pg_sleep (wait_event '$we'); cancelling anyway"
  sleep 1
  pid0=$(psql_in -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_distill worker'")
  t0=$(now_ms)
  q mallory -c "SELECT distill.finetune('CANCEL', '$HOG')->>'status'" || { DETAIL="CANCEL by its owner failed: $(first_error)"; return 1; }
  while :; do
    s=$(job_status "$HOG")
    ms=$(($(now_ms) - t0))
    [ "$s" = CANCELLED ] || [ "$ms" -gt 10000 ] && break
    sleep 0.05
  done
  note "CANCEL of a job sleeping in its training query: $s after $ms ms (worker pid $pid0, now $(psql_in -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_distill worker'"))"
  INFO="$ms ms"
  [ "$s" = CANCELLED ] || { DETAIL="status $s after $ms ms"; return 1; }
  sleep 0.5
  we=$(worker_wait_event)
  [ "$we" != PgSleep ] || { DETAIL="CANCELLED after $ms ms, but the worker still sleeps in the job's query"; return 1; }
}
check "6: a job stuck in pg_sleep(600) in its training query is CANCELLED by its owner within 10 s" attack_6_cancel

# ---- roles and settings ---------------------------------------------------------------------------------
roles_nobody() {
  calls nobody "" \
    complete "SELECT distill.complete('smollm2-135m', 'hi', '{\"max_tokens\": 1}');" \
    create "SELECT distill.finetune('CREATE', 'nobody_model', 'smollm2-135m', :'tq', NULL, :'tiny');" \
    count "SELECT distill.count_tokens('smollm2-135m', 'hi');" \
    import "SELECT distill.import_adapter('nobody_model', 'smollm2-135m', '\\x504b0506'::bytea);" \
    evaluate "SELECT distill.evaluate('smollm2-135m', :'tq');" \
    show "SELECT distill.finetune('SHOW');"
  local l
  for l in complete create count import evaluate show; do expect "$l" 42501; done
  grep -q 'permission denied for function complete' <<<"$OUT$ERR" || BAD+="complete: no 'permission denied for function complete'; "
  grep -q 'permission denied for function finetune' <<<"$OUT$ERR" || BAD+="CREATE: no 'permission denied for function finetune'; "
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  forget nobody_model
}
check "roles: nobody (no distill role) is refused complete(), finetune CREATE and the rest with 42501" roles_nobody

roles_viewer() {
  calls viewer "" \
    complete "SELECT length(distill.complete('smollm2-135m', 'hi', '{\"max_tokens\": 1}')) >= 0;" \
    show "SELECT distill.finetune('SHOW') IS NOT NULL;" \
    jobs "SELECT count(*) FROM distill.jobs;" \
    create "SELECT distill.finetune('CREATE', 'viewer_model', 'smollm2-135m', :'tq', NULL, :'tiny');" \
    import "SELECT distill.import_adapter('viewer_model', 'smollm2-135m', '\\x504b0506'::bytea);"
  expect complete 00000; expect show 00000; expect jobs 00000; expect create 42501; expect import 42501
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  forget viewer_model
}
check "roles: a distill_user-only role may complete() and SHOW, not CREATE or import_adapter" roles_viewer

settings_superuser_only() {
  local s args=() l
  for s in max_pending_jobs_per_role max_jobs_per_role max_models_per_role max_query_bytes \
           max_input_bytes max_adapter_bytes max_training_rows; do
    args+=("set_$s" "SET distill.$s = 100000000;")
  done
  calls mallory "" "${args[@]}" \
    set_config "SELECT set_config('distill.max_input_bytes', '2000000000', false);" \
    alter_role "ALTER ROLE mallory SET distill.max_pending_jobs_per_role = 1000;" \
    model_dir "SET distill.model_dir = '/tmp';"
  # Suset settings: 42501 (permission denied to set parameter); distill.max_training_rows is a
  # sighup setting, which no session may SET (55P02).
  for s in max_pending_jobs_per_role max_jobs_per_role max_models_per_role max_query_bytes \
           max_input_bytes max_adapter_bytes max_training_rows; do
    expect "set_$s" 42501 55P02
  done
  expect set_config 42501 55P02; expect alter_role 42501 55P02; expect model_dir 42501 55P02
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  q mallory -c "SHOW distill.model_dir"
  note "SHOW distill.model_dir as mallory: $(flat "${OUT:-$(first_error)}")"
}
check "settings: mallory cannot raise the distill.* limits (SET, set_config, ALTER ROLE)" settings_superuser_only

# ---- 9. oversized queries ---------------------------------------------------------------------------------
attack_9() {
  local big=":'tq' || ' /* ' || repeat('x', 70000) || ' */'"
  calls carol "" \
    training "SELECT distill.finetune('CREATE', 'big_query', 'smollm2-135m', $big, NULL, :'tiny');" \
    validation "SELECT distill.finetune('CREATE', 'big_query', 'smollm2-135m', :'tq', $big, :'tiny');" \
    evaluate "SELECT distill.evaluate('smollm2-135m', $big, '{\"max_tokens\": 1}');"
  expect training 54000; expect validation 54000; expect evaluate 54000
  local queued; queued=$(psql_in -c "SELECT count(*) FROM distill.job_registry WHERE model = 'big_query'")
  [ "$queued" = 0 ] || BAD+="a big_query job was queued; "
  forget big_query
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
}
check "9: a 70 kB training_sql / validation_sql at CREATE and a 70 kB evaluate() query fail with 54000" attack_9

# ---- 11a. no model directory in errors --------------------------------------------------------------------
attack_11_dir() {
  [ -n "$MODEL_DIR" ] || { DETAIL="distill.model_dir unknown"; return 1; }
  calls mallory "" \
    complete "SELECT distill.complete('no_such_model', 'hi');" \
    complete_opts "SELECT distill.complete('no_such_model', 'hi', '{\"max_tokens\": 1}');" \
    chat "SELECT distill.complete('no_such_model', '[{\"role\": \"user\", \"content\": \"hi\"}]'::jsonb, '{}'::jsonb);" \
    count "SELECT distill.count_tokens('no_such_model', 'hi');" \
    classify "SELECT distill.classify('no_such_model', 'hi', ARRAY['a', 'b']);" \
    evaluate "SELECT distill.evaluate('no_such_model', :'tq');" \
    create "SELECT distill.finetune('CREATE', 'mal_nobase', 'no_such_base', :'tq', NULL, :'tiny');" \
    import "SELECT distill.import_adapter('mal_nobase', 'no_such_base', (SELECT '\\x504b0506'::bytea));" \
    hub "SELECT distill.complete('some-org/some-repo/model.gguf', 'hi');" \
    dotdot "SELECT distill.complete('../../../etc/passwd', 'hi');"
  local l
  for l in complete complete_opts chat count classify evaluate create import hub dotdot; do expect "$l" ERR; done
  if grep -qF -- "$MODEL_DIR" <<<"$OUT$ERR"; then
    BAD+="the model directory appears: $(grep -F -- "$MODEL_DIR" <<<"$OUT$ERR" | head -n2 | tr '\n' ' '); "
  fi
  forget mal_nobase
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="complete: $(msg complete)"
}
check "11: errors about missing models (complete, chat, count_tokens, classify, evaluate, CREATE, import, hub) do not show distill.model_dir" attack_11_dir

# ---- 7. queue flood --------------------------------------------------------------------------------------
FLOOD=()
unfinished() {
  psql_in -c "SELECT count(*) FROM distill.job_registry WHERE owner = '$1'::regrole AND status IN ('PENDING', 'IN_PROGRESS')"
}
attack_7() {
  local before i refused="" after
  before=$(unfinished mallory)
  for i in 1 2 3 4 5; do
    if create_job mallory "mal_flood_$i" "$TQ"; then FLOOD+=("$JOB"); else refused=$STATE; break; fi
  done
  after=$(unfinished mallory)
  note "queue flood: mallory had $before unfinished jobs, created ${#FLOOD[@]} more, then: ${refused:-never refused} ($(first_error))"
  [ "$refused" = 53400 ] || { DETAIL="after ${#FLOOD[@]} more jobs: ${refused:-no refusal} $(first_error)"; return 1; }
  [ "$after" = 3 ] || { DETAIL="refused with $after unfinished jobs, expected at 3 (the default limit)"; return 1; }
  create_job alice acme_extra "$TQ" || { DETAIL="alice was blocked: $(first_error)"; return 1; }
  q alice -c "SELECT distill.finetune('CANCEL', '$JOB')->>'status'" || { DETAIL="alice could not cancel her job: $(first_error)"; return 1; }
  INFO="refused at 3 unfinished jobs; alice unaffected"
}
check "7: mallory's 4th unfinished job is refused with 53400 while alice can still queue" attack_7

# ---- 1 (part 1). elevated paths under mallory's look-alike search_path, before training ----------------
MAL_BAD=""
mal_paths_1() {
  local args=() i=0 j
  for j in "${FLOOD[@]}"; do
    i=$((i + 1))
    args+=("cancel_$i" "SELECT distill.finetune('CANCEL', '$j')->>'status';")
  done
  calls mallory "$MAL_PRE" \
    show "SELECT jsonb_array_length(distill.finetune('SHOW'));" \
    describe "SELECT distill.finetune('DESCRIBE', '$EVIL')->>'status';" \
    "${args[@]}" \
    wait_cancelled "SELECT distill.wait('$HOG', 5)->>'status';" \
    jobs "SELECT count(*) FROM distill.jobs;" \
    models "SELECT count(*) FROM distill.models;" \
    usage "SELECT count(*) FROM distill.usage;" \
    complete "SELECT length(distill.complete('smollm2-135m', 'hi', '{\"max_tokens\": 2}')) >= 0;" \
    chat "SELECT distill.complete('smollm2-135m', '[{\"role\": \"user\", \"content\": \"hi\"}]'::jsonb, '{\"max_tokens\": 2}'::jsonb) IS NOT NULL;" \
    try "SELECT distill.try_complete('smollm2-135m', 'hi', '{\"max_tokens\": 2}'::jsonb) IS NOT NULL;" \
    count "SELECT distill.count_tokens('smollm2-135m', 'hello');" \
    classify "SELECT distill.classify('smollm2-135m', 'my bill is wrong', ARRAY['billing', 'other']);" \
    evaluate "SELECT distill.evaluate('smollm2-135m', 'SELECT request AS prompt, label AS completion FROM tickets ORDER BY id LIMIT 2', '{\"max_tokens\": 2}') IS NOT NULL;" \
    grant_missing "SELECT distill.grant_model('no_such_model', 'carol');" \
    revoke_missing "SELECT distill.revoke_model('no_such_model', 'carol');" \
    drop_missing "SELECT distill.drop_model('no_such_model');" \
    export_missing "SELECT distill.export_adapter('no_such_model');"
  cat "$work/q.err" >>"$work/mal_sessions.err"
  local l
  for l in show describe wait_cancelled jobs models usage complete chat try count classify evaluate; do expect "$l" 00000; done
  for ((j = 1; j <= i; j++)); do expect "cancel_$j" 00000; done
  for l in grant_missing revoke_missing drop_missing export_missing; do expect "$l" ERR; done
  # Whatever happened above, no flood job may stay queued.
  for j in "${FLOOD[@]}"; do [ "$(job_status "$j")" = CANCELLED ] || cancel_su "$j"; done
  MAL_BAD+=$BAD
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="SHOW, DESCRIBE, ${i} CANCELs, wait, views, complete/chat/try/count/classify/evaluate, grant/revoke/drop/export errors"
}
check "1: mallory's calls under search_path mal, public, pg_catalog work (part 1: before her model exists)" mal_paths_1

# ---- 6 (end). the worker is free: alice's job, next in the queue, trains ---------------------------------
attack_6_next() {
  local s; s=$(wait_job "$ACME" 300)
  INFO="alice's job: $s"
  [ "$s" = SUCCESS ] || { DETAIL="alice's job acme_tickets: $s $(job_error "$ACME")"; return 1; }
}
check "6: after the cancel the worker trains the next job (alice's acme_tickets) to SUCCESS" attack_6_next
s=$(wait_job "$SECRET_JOB" 120)
note "alice's failing job acme_secret: $s: $(job_error "$SECRET_JOB")"

# ---- 11b. an ungranted model --------------------------------------------------------------------------------
attack_11_owner() {
  calls mallory "" \
    complete "SELECT distill.complete('acme_tickets', 'hi');" \
    complete_opts "SELECT distill.complete('acme_tickets', 'hi', '{\"max_tokens\": 2}');" \
    chat "SELECT distill.complete('acme_tickets', '[{\"role\": \"user\", \"content\": \"hi\"}]'::jsonb, '{}'::jsonb);" \
    count "SELECT distill.count_tokens('acme_tickets', 'hi');" \
    classify "SELECT distill.classify('acme_tickets', 'hi', ARRAY['a', 'b']);" \
    evaluate "SELECT distill.evaluate('acme_tickets', :'tq');" \
    export "SELECT distill.export_adapter('acme_tickets');" \
    grant "SELECT distill.grant_model('acme_tickets', 'mallory');" \
    revoke "SELECT distill.revoke_model('acme_tickets', 'public');" \
    drop "SELECT distill.drop_model('acme_tickets');" \
    as_base "SELECT distill.finetune('CREATE', 'mal_on_acme', 'acme_tickets', :'tq', NULL, :'tiny');" \
    import_base "SELECT distill.import_adapter('mal_on_acme', 'acme_tickets', '\\x504b0506'::bytea);" \
    describe "SELECT distill.finetune('DESCRIBE', '$ACME');" \
    cancel "SELECT distill.finetune('CANCEL', '$ACME');" \
    wait "SELECT distill.wait('$ACME', 1);"
  local l
  for l in complete complete_opts chat count classify evaluate; do expect "$l" 42501; done
  for l in export grant revoke drop; do expect "$l" 42501; done
  for l in as_base import_base; do expect "$l" ERR; done
  for l in describe cancel wait; do expect "$l" 42704; done
  grep -q 'permission denied for model "acme_tickets"' <<<"$ERR" || BAD+="no 'permission denied for model \"acme_tickets\"'; "
  if grep -qiw alice <<<"$OUT$ERR"; then BAD+="the owner is named: $(grep -iw alice <<<"$OUT$ERR" | head -n2 | tr '\n' ' '); "; fi
  forget mal_on_acme
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="$(msg complete)"
}
check "11: alice's ungranted model: permission denied (42501) without naming its owner; her job reads as missing" attack_11_owner

# ---- 3. leaky views -----------------------------------------------------------------------------------------
attack_3() {
  q alice -c "SELECT length(distill.complete('acme_tickets', 'My bill has roaming fees', '{\"max_tokens\": 4}')) >= 0" \
    || note "alice's complete() failed: $(first_error)"
  grep -q SECRET_alice <<<"$(job_error "$SECRET_JOB")" || note "acme_secret's error holds no secret: the jobs check is weaker"
  q mallory <<'SQL' || { DETAIL="mallory's queries failed: $(first_error)"; return 1; }
SET client_min_messages = notice;
SELECT * FROM distill.jobs WHERE mal.leak('jobs: ' || id || ' ' || model || ' ' || owner::text || ' ' || coalesce(error, ''));
SELECT * FROM distill.models WHERE mal.leak('models: ' || name || ' ' || owner::text || ' ' || metrics::text);
SELECT * FROM distill.usage WHERE mal.leak('usage: ' || model || ' ' || role::text);
SELECT * FROM distill.jobs j WHERE mal.leak('jobs2: ' || j.model) AND j.status IS NOT NULL ORDER BY mal.leak('jobs3: ' || j.id);
SQL
  local leaks own bad
  leaks=$(grep 'leak: ' <<<"$ERR")
  bad=$(grep -iE "alice|acme_|SECRET_|${ACME:-no-such-id}|${SECRET_JOB:-no-such-id}" <<<"$leaks")
  [ -z "$bad" ] || { DETAIL="mallory saw: $(head -n3 <<<"$bad" | tr '\n' ' ')"; return 1; }
  own=$(grep -c 'leak: jobs: ' <<<"$leaks")
  [ "$own" -gt 0 ] || { DETAIL="leak() never ran on mallory's own job rows: the test saw nothing"; return 1; }
  INFO="leak() ran on $(grep -c . <<<"$leaks") of mallory's own rows, none of alice's"
}
check "3: a leaky function in WHERE over distill.jobs / models / usage sees only mallory's rows" attack_3

# ---- 4. a role named "Public" ----------------------------------------------------------------------------------
mallory_can_use() {  # mallory_can_use MODEL: 00000 when complete() works for her, else its SQLSTATE
  q mallory -c "SELECT length(distill.complete('$1', 'hi', '{\"max_tokens\": 2}')) >= 0"
  echo "$STATE"
}
attack_4() {
  local s granted
  q alice -c "SELECT distill.grant_model('acme_tickets', 'Public')" || { DETAIL="grant to \"Public\": $(first_error)"; return 1; }
  granted=$(psql_in -c "SELECT granted_to::text FROM distill.models WHERE name = 'acme_tickets'")
  s=$(mallory_can_use acme_tickets)
  [ "$s" = 42501 ] || { DETAIL="granted to \"Public\" (granted_to $granted), mallory got $s"; return 1; }
  q alice -c "SELECT distill.grant_model('acme_tickets', 'PUBLIC')"
  [ "$STATE" != 00000 ] || BAD+="grant to 'PUBLIC' (no role has that name) succeeded; "
  s=$(mallory_can_use acme_tickets)
  [ "$s" = 42501 ] || BAD+="after grant 'PUBLIC', mallory got $s; "
  q alice -c "SELECT distill.grant_model('acme_tickets', 'public')" || { DETAIL="grant to public: $(first_error)"; return 1; }
  s=$(mallory_can_use acme_tickets)
  [ "$s" = 00000 ] || BAD+="granted to public, mallory got $s ($(first_error)); "
  q alice -c "SELECT distill.revoke_model('acme_tickets', 'public')" || BAD+="revoke public: $(first_error); "
  s=$(mallory_can_use acme_tickets)
  [ "$s" = 42501 ] || BAD+="after revoke public, mallory got $s; "
  q alice -c "SELECT distill.revoke_model('acme_tickets', 'Public')" || BAD+="revoke \"Public\": $(first_error); "
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="granted_to after grant 'Public': $granted"
}
check "4: grant_model(m, 'Public') reaches only the role \"Public\"; 'public' means PUBLIC and revoke undoes it" attack_4

# ---- 5. squatting a base model's name ----------------------------------------------------------------------------
HAVE_EXPORT=0
SQUAT_CMP="SELECT (a IS NOT DISTINCT FROM b)::text || '|' || replace(coalesce(a, 'NULL'), E'\\n', ' ') || ' <> ' || replace(coalesce(b, 'NULL'), E'\\n', ' ')
FROM (SELECT distill.complete('squat_base', p, o) AS a, distill.complete('smollm2-135m', p, o) AS b
      FROM (SELECT request AS p FROM tickets ORDER BY id LIMIT 1) t, (SELECT '{\"max_tokens\": 8}'::jsonb AS o) x) s"
attack_5_base_wins() {
  q alice -c "INSERT INTO public.blobs VALUES ('acme_export', distill.export_adapter('acme_tickets'))" \
    || { DETAIL="alice could not export acme_tickets: $(first_error)"; return 1; }
  HAVE_EXPORT=1
  q mallory <<'SQL' || { DETAIL="mallory could not import alice's archive as squat_base: $(first_error)"; return 1; }
SELECT distill.import_adapter('squat_base', 'smollm2-135m', (SELECT data FROM public.blobs WHERE name = 'acme_export')) IS NOT NULL;
SELECT distill.grant_model('squat_base', 'public');
SQL
  q mallory -c "$SQUAT_CMP" && note "before squat_base.gguf exists, mallory's squat_base answers like the base model: ${OUT%%|*}"
  local src=$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f "$src" ] || { DETAIL="no $src to copy"; return 1; }
  model_files+=("$MODEL_DIR/squat_base.gguf" "$MODEL_DIR/squat_new.gguf")
  cp -- "$src" "$MODEL_DIR/squat_base.gguf" && cp -- "$src" "$MODEL_DIR/squat_new.gguf" \
    || { DETAIL="could not copy the model file into $MODEL_DIR"; return 1; }
  q carol -c "$SQUAT_CMP" || { DETAIL="carol's complete('squat_base'): $(first_error)"; return 1; }
  [ "${OUT%%|*}" = true ] || { DETAIL="complete('squat_base') and complete('smollm2-135m') differ: ${OUT#*|}"; return 1; }
  INFO="same reply: ${OUT#*|}"
}
check "5: a base file squat_base.gguf wins over mallory's tuned model squat_base in complete()" attack_5_base_wins

attack_5_refused() {
  [ "$HAVE_EXPORT" = 1 ] || { DETAIL="no exported archive (see above)"; return 1; }
  [ -f "$MODEL_DIR/squat_new.gguf" ] || { DETAIL="no squat_new.gguf (see above)"; return 1; }
  local arch="(SELECT data FROM public.blobs WHERE name = 'acme_export')"
  calls mallory "" \
    import_taken "SELECT distill.import_adapter('squat_base', 'smollm2-135m', $arch);" \
    import_base "SELECT distill.import_adapter('squat_new', 'smollm2-135m', $arch);" \
    create_base "SELECT distill.finetune('CREATE', 'squat_new', 'smollm2-135m', :'tq', NULL, :'tiny');" \
    create_taken "SELECT distill.finetune('CREATE', 'squat_base', 'smollm2-135m', :'tq', NULL, :'tiny');"
  local l
  for l in import_taken import_base create_base create_taken; do
    expect "$l" ERR && case $(st "$l") in 53400 | 54000 | 42501) BAD+="$l refused for another reason: $(msg "$l"); " ;; esac
  done
  grep -q 'base model' <<<"$(msg import_base) $(msg create_base)" || note "the refusals do not say 'base model': $(msg import_base)"
  forget squat_new
  rm -f -- "$MODEL_DIR/squat_base.gguf" "$MODEL_DIR/squat_new.gguf"
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="$(msg import_base)"
}
check "5: CREATE and import_adapter refuse the name of a base model file (squat_new, squat_base)" attack_5_refused

# ---- 8. memory bombs ----------------------------------------------------------------------------------------------
big="repeat('abcd ', 2400000)"
attack_8a() {
  MEM=1 calls mallory "$WARM" \
    count_tokens "SELECT distill.count_tokens('smollm2-135m', $big);" \
    complete "SELECT distill.complete('smollm2-135m', $big, '{\"max_tokens\": 1}');" \
    chat "SELECT distill.complete('smollm2-135m', jsonb_build_array(jsonb_build_object('role', 'user', 'content', $big)), '{\"max_tokens\": 1}'::jsonb);" \
    classify "SELECT distill.classify('smollm2-135m', $big, ARRAY['yes', 'no']);"
  local l
  for l in count_tokens complete chat classify; do expect "$l" 54000; mem_under "$l" 150; done
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
}
check "8a: 12 MB texts to count_tokens / complete / chat / classify: 54000, peak RSS growth < 150 MB" attack_8a

attack_8b() {
  local choice="rtrim(repeat('cat ', 200))"
  MEM=1 calls mallory "$WARM" \
    tokens "SELECT 'TOKENS ' || distill.count_tokens('smollm2-135m', $choice);" \
    scores "SELECT 'SCORES ' || ((distill.complete('smollm2-135m', 'Answer with one of the choices.', jsonb_build_object('choices', jsonb_build_array($choice, 'no'), 'scores', true)))::jsonb ? 'scores')::text;"
  note "the long choice is $(grep -m1 '^TOKENS' <<<"$OUT" | cut -d' ' -f2) tokens"
  expect scores 00000
  grep -qx 'SCORES true' <<<"$OUT" || BAD+="no scores in the reply; "
  mem_under scores 300
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
}
check "8b: choices with a 200-token choice and scores: works, peak RSS growth < 300 MB" attack_8b

ARCHIVES=0
load_archives() {  # the bombs and alice's archive's hostile variants, into public.blobs
  wait "$bombs_pid"
  [ "$HAVE_EXPORT" = 1 ] || { echo "no export of alice's model"; return 1; }
  psql_in -c "SELECT encode(data, 'hex') FROM public.blobs WHERE name = 'acme_export'" \
    | python3 tests/security/adapters.py variants "$work/adapters" >>"$work/bombs.log" 2>&1 || { cat "$work/bombs.log"; return 1; }
  chmod -R a+rX "$work/adapters"
  local f
  for f in zipbomb zipbomb_lying rezip nan inf badshape hugeshape; do
    [ -f "$work/adapters/$f.zip" ] || { echo "$f.zip missing: $(cat "$work/bombs.log")"; return 1; }
    psql_in -c "INSERT INTO public.blobs VALUES ('$f', pg_read_binary_file('$work/adapters/$f.zip'))" || return 1
  done
  sed 's/^/# /' "$work/bombs.log"
  ARCHIVES=1
}
load_archives || note "the hostile archives could not be made: 8c-8e will fail"
imp() { echo "SELECT distill.import_adapter('$1', 'smollm2-135m', (SELECT data FROM public.blobs WHERE name = '$2'))->>'model';"; }

attack_8c() {
  [ "$ARCHIVES" = 1 ] || { DETAIL="no archives"; return 1; }
  MEM=1 calls mallory "$WARM" bomb "$(imp mal_bomb zipbomb)" bomb_lying "$(imp mal_bomb zipbomb_lying)"
  expect bomb ERR; mem_under bomb 200
  expect bomb_lying ERR; mem_under bomb_lying 200
  forget mal_bomb
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="$(msg bomb_lying)"
}
check "8c: import_adapter of a zip bomb (1.1 GiB of zeros, true or lying size): refused, growth < 200 MB" attack_8c

attack_8d() {
  [ "$ARCHIVES" = 1 ] || { DETAIL="no archives"; return 1; }
  MEM=1 calls mallory "$WARM" rezip "$(imp mal_rezip rezip)" badshape "$(imp mal_shape badshape)" \
    hugeshape "$(imp mal_shape hugeshape)"
  expect rezip 00000 || BAD+="(the control: alice's archive re-serialized by adapters.py must import); "
  expect badshape ERR
  expect hugeshape ERR; mem_under hugeshape 200
  forget mal_rezip mal_shape
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="$(msg badshape); $(msg hugeshape)"
}
check "8d: an adapter whose header declares a wrong shape (consistent, or gigabytes not in the file) is refused" attack_8d

attack_8e() {
  [ "$ARCHIVES" = 1 ] || { DETAIL="no archives"; return 1; }
  calls mallory "" nan "$(imp mal_nan nan)" inf "$(imp mal_nan inf)"
  local l
  for l in nan inf; do
    expect "$l" ERR && { grep -q 'non-finite' <<<"$(msg "$l")" || BAD+="$l: no 'non-finite' in: $(msg "$l"); "; }
  done
  forget mal_nan
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="$(msg nan)"
}
check "8e: adapters with a NaN or an Inf weight are refused as non-finite" attack_8e

attack_8g() {
  calls mallory "" \
    too_many "SELECT distill.complete('smollm2-135m', 'Pick one.', jsonb_build_object('choices', (SELECT jsonb_agg('c' || g) FROM generate_series(1, 1001) g)));" \
    too_long "SELECT distill.complete('smollm2-135m', 'Pick one.', jsonb_build_object('choices', jsonb_build_array(repeat('a', 1025), 'b')));" \
    too_many_tokens "SELECT distill.complete('smollm2-135m', 'Pick one.', jsonb_build_object('choices', jsonb_build_array(rtrim(repeat('a ', 300)), 'b')));" \
    thousand "SELECT distill.complete('smollm2-135m', 'Pick one.', jsonb_build_object('choices', (SELECT jsonb_agg('c' || g) FROM generate_series(1, 1000) g))) IS NOT NULL;"
  expect too_many ERR; expect too_long ERR; expect too_many_tokens ERR; expect thousand 00000
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="$(msg too_many_tokens)"
}
check "8g: choice lists past 1000 choices, 1024 bytes or 256 tokens a choice are refused; 1000 short ones work" attack_8g

# ---- 1 (part 2). mallory's own model, under her look-alike search_path -------------------------------------------
mal_paths_2() {
  T=400 calls mallory "$MAL_PRE" \
    wait "SELECT distill.wait('$EVIL', 300)->>'status';" \
    describe "SELECT distill.finetune('DESCRIBE', '$EVIL')->>'status';" \
    show "SELECT jsonb_array_length(distill.finetune('SHOW'));" \
    complete "SELECT distill.complete('mal_evil', 'My bill has roaming fees', '{\"max_tokens\": 4}') IS NOT NULL;" \
    chat "SELECT distill.complete('mal_evil', '[{\"role\": \"user\", \"content\": \"hi\"}]'::jsonb, '{\"max_tokens\": 2}'::jsonb) IS NOT NULL;" \
    try "SELECT distill.try_complete('mal_evil', 'hi', '{\"max_tokens\": 2}'::jsonb) IS NOT NULL;" \
    choices "SELECT distill.complete('mal_evil', 'My bill has roaming fees', '{\"choices\": [\"billing\", \"other\"], \"scores\": true}');" \
    classify "SELECT distill.classify('mal_evil', 'my bill', ARRAY['billing', 'other']);" \
    count "SELECT distill.count_tokens('mal_evil', 'hello there');" \
    evaluate "SELECT distill.evaluate('mal_evil', 'SELECT request AS prompt, label AS completion FROM tickets ORDER BY id LIMIT 2', '{\"max_tokens\": 4}')->>'rows';" \
    grant "SELECT distill.grant_model('mal_evil', 'carol');" \
    revoke "SELECT distill.revoke_model('mal_evil', 'carol');" \
    grant_public "SELECT distill.grant_model('mal_evil', 'public');" \
    revoke_public "SELECT distill.revoke_model('mal_evil', 'public');" \
    export "INSERT INTO mal.blobs VALUES ('evil', distill.export_adapter('mal_evil'));" \
    import "SELECT distill.import_adapter('mal_evil_copy', 'smollm2-135m', (SELECT data FROM mal.blobs WHERE name = 'evil'))->>'model';" \
    complete_copy "SELECT distill.complete('mal_evil_copy', 'hi', '{\"max_tokens\": 2}') IS NOT NULL;" \
    drop_copy "SELECT distill.drop_model('mal_evil_copy');" \
    jobs "SELECT count(*) FROM distill.jobs;" \
    models "SELECT count(*) FROM distill.models;" \
    usage "SELECT count(*) FROM distill.usage;"
  cat "$work/q.err" >>"$work/mal_sessions.err"
  local l
  for l in wait describe show complete chat try choices classify count evaluate grant revoke grant_public \
           revoke_public export import complete_copy drop_copy jobs models usage; do
    expect "$l" 00000
  done
  grep -qx 'SUCCESS' <<<"$OUT" || BAD+="mal_evil did not train: $(job_status "$EVIL") $(job_error "$EVIL"); "
  forget mal_evil_copy
  MAL_BAD+=$BAD
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO="job SUCCESS; complete/chat/try/choices/classify/count/evaluate, grants, export, import, drop, views"
}
check "1: mallory's calls under search_path mal, public, pg_catalog work (part 2: her job's life, her model)" mal_paths_2

# ---- 2. set_config in a training query --------------------------------------------------------------------------
pwned() { psql_in -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pwned'"; }
attack_2_job() {
  local s; s=$(wait_job "$SETCFG" 300)
  local p; p=$(pwned)
  INFO="status $s"
  case $s in
    SUCCESS) ;;
    ERROR) note "the set_config job ended in ERROR: $(job_error "$SETCFG")" ;;
    *) DETAIL="the set_config job did not finish: $s"; return 1 ;;
  esac
  [ "$p" = 0 ] || { DETAIL="a backend is called 'pwned' after the job"; return 1; }
}
check "2: a training query that set_config()s search_path, statement_timeout, read-only and application_name finishes" attack_2_job

attack_2_next() {
  local s; s=$(wait_job "$AFTER" 300)
  [ "$s" = SUCCESS ] || { DETAIL="carol's next job: $s $(job_error "$AFTER")"; return 1; }
  local app; app=$(psql_in -c "SELECT application_name FROM pg_stat_activity WHERE backend_type = 'pg_distill worker'")
  [ "$app" != pwned ] && [ "$(pwned)" = 0 ] || { DETAIL="the worker's application_name is '$app'"; return 1; }
  INFO="worker application_name '$app'"
}
check "2: after it the worker trains the next job (carol's) to SUCCESS and is not called 'pwned'" attack_2_next

# ---- per-role limits set by a superuser ------------------------------------------------------------------------
limits() {
  local n arch="(SELECT data FROM public.blobs WHERE name = 'acme_export')"
  [ "$HAVE_EXPORT" = 1 ] || { DETAIL="no exported archive"; return 1; }
  n=$(psql_in -c "SELECT (SELECT count(*) FROM distill.model_registry WHERE owner = 'mallory'::regrole)
                       + (SELECT count(*) FROM distill.job_registry WHERE owner = 'mallory'::regrole AND status IN ('PENDING', 'IN_PROGRESS'))")
  if [ "${n:-0}" -ge 1 ]; then
    set_guc max_models_per_role "$n" || BAD+="ALTER SYSTEM max_models_per_role: $(first_error); "
    calls mallory "" import "SELECT distill.import_adapter('mal_over', 'smollm2-135m', $arch);" \
      create "SELECT distill.finetune('CREATE', 'mal_over', 'smollm2-135m', :'tq', NULL, :'tiny');"
    expect import 53400; expect create 53400
    set_guc max_models_per_role RESET
  else
    BAD+="mallory owns no model, max_models_per_role untested; "
  fi
  forget mal_over
  n=$(psql_in -c "SELECT count(*) FROM distill.job_registry WHERE owner = 'mallory'::regrole")
  set_guc max_jobs_per_role "$n" || BAD+="ALTER SYSTEM max_jobs_per_role: $(first_error); "
  calls mallory "" jobs "SELECT distill.finetune('CREATE', 'mal_over', 'smollm2-135m', :'tq', NULL, :'tiny');"
  expect jobs 53400
  set_guc max_jobs_per_role RESET
  forget mal_over
  set_guc max_adapter_bytes 100000 || BAD+="ALTER SYSTEM max_adapter_bytes: $(first_error); "
  calls mallory "" adapter "SELECT distill.import_adapter('mal_over', 'smollm2-135m', $arch);"
  expect adapter 54000
  set_guc max_adapter_bytes RESET
  forget mal_over
  set_guc max_input_bytes 1024 || BAD+="ALTER SYSTEM max_input_bytes: $(first_error); "
  calls mallory "" input "SELECT distill.count_tokens('smollm2-135m', repeat('x', 2000));"
  expect input 54000
  set_guc max_input_bytes RESET
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
}
check "limits: max_models_per_role and max_jobs_per_role (53400), max_adapter_bytes and max_input_bytes (54000)" limits

attack_8f() {
  set_guc max_training_rows 10 || { DETAIL="ALTER SYSTEM: $(first_error)"; return 1; }
  sleep 1
  if ! create_job mallory mal_rows "$TQ"; then
    DETAIL="CREATE: $(first_error)"; set_guc max_training_rows RESET; return 1
  fi
  local id=$JOB s e
  s=$(wait_job "$id" 180)
  e=$(job_error "$id")
  set_guc max_training_rows RESET
  forget mal_rows
  [ "$s" = ERROR ] && grep -q max_training_rows <<<"$e" || { DETAIL="status $s, error: $e"; return 1; }
  INFO="$e"
}
check "8f: with distill.max_training_rows = 10 a job over 16 rows ends in ERROR naming the setting" attack_8f

# ---- 10. cancel latency -------------------------------------------------------------------------------------------
elapsed_sql="SELECT 'ELAPSED ' || round((extract(epoch FROM clock_timestamp()) - :t0)::numeric, 3);"
t0_sql="SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset"
timed() {  # timed LABEL SQL: the call LABEL under statement_timeout = 1s; sets ELAPSED (s)
  T=120 calls mallory "$WARM
SET statement_timeout = '1s';" \
    "$1" "$t0_sql
$2" \
    elapsed "$elapsed_sql"
  ELAPSED=$(grep -m1 '^ELAPSED' <<<"$OUT" | cut -d' ' -f2)
  note "statement_timeout 1s, $1: $(st "$1") after ${ELAPSED:-?} s"
  expect "$1" 57014 || return 1
  awk -v e="${ELAPSED:-99}" 'BEGIN {exit !(e < 3)}' || { BAD+="$1: ${ELAPSED:-?} s (limit 3 s); "; return 1; }
}
attack_10_complete() {
  timed complete "SELECT distill.complete('smollm2-135m', $LONG_PROMPT, '{\"max_tokens\": 4000}');" || { DETAIL=$BAD; return 1; }
  INFO="57014 after $ELAPSED s"
}
check "10: statement_timeout = 1s stops complete() on a long prompt with 57014 within 3 s" attack_10_complete

attack_10_evaluate() {
  timed evaluate "SELECT distill.evaluate('smollm2-135m', 'SELECT request AS prompt, label AS completion FROM tickets CROSS JOIN generate_series(1, 2) g LIMIT 200', '{\"max_tokens\": 16}');" \
    || { DETAIL=$BAD; return 1; }
  INFO="57014 after $ELAPSED s"
}
check "10: statement_timeout = 1s stops evaluate() over 200 rows with 57014 within 3 s" attack_10_evaluate

attack_10_cancel() {
  rm -f "$work/cancel.end"
  (
    T=120 psql_as mallory >"$work/cancel.out" 2>"$work/cancel.err" <<SQL
SET application_name = 'sec_cancel_target';
$WARM
SELECT distill.complete('smollm2-135m', $LONG_PROMPT, '{"max_tokens": 4000}');
SQL
    now_ms >"$work/cancel.end"
  ) &
  local bg=$! i target="" t0 ms
  for i in $(seq 150); do
    target=$(psql_in -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'sec_cancel_target'
                         AND state = 'active' AND query LIKE '%4000%' AND now() - query_start > interval '1.5 s'" 2>/dev/null)
    [ -n "$target" ] && break
    [ -f "$work/cancel.end" ] && break
    sleep 0.2
  done
  [ -n "$target" ] || { wait "$bg"; DETAIL="the long complete() was never seen running: $(flat "$(cat "$work/cancel.err")")"; return 1; }
  t0=$(now_ms)
  psql_in -c "SELECT pg_cancel_backend($target)" >/dev/null
  wait "$bg"
  ms=$(($(cat "$work/cancel.end" 2>/dev/null || now_ms) - t0))
  note "pg_cancel_backend during a long complete(): the error came after $ms ms"
  grep -qE 'ERROR: +57014' "$work/cancel.err" || { DETAIL="no 57014: $(flat "$(cat "$work/cancel.err")")"; return 1; }
  [ "$ms" -lt 2000 ] || { DETAIL="the cancel took $ms ms (limit 2000)"; return 1; }
  INFO="$ms ms"
}
check "10: pg_cancel_backend() from another session stops a long complete() within 2 s" attack_10_cancel

# ---- 12. endpoints ------------------------------------------------------------------------------------------------
# A superuser's endpoint with a stored key, granted to mallory only (its URL a closed local port: no
# request leaves the machine). mallory drives every endpoint path under her look-alike search_path
# (the registry reads run as its owner); carol, an endpoint admin, may not make the server read its
# environment or files into a request; no output shows the key; a leaky function over
# distill.endpoints sees only what the view lets through.
EP_KEY=sk-SECRET-endpoint-key-8c7b6a5d4e3f
attack_12_endpoints() {
  q postgres -v key="$EP_KEY" <<'SQL' || { DETAIL="set-up: $(first_error)"; return 1; }
SELECT distill.create_endpoint('acme_teacher', 'http://127.0.0.1:1/v1', 'gpt', pg_catalog.jsonb_build_object('api_key', :'key', 'max_retries', 0));
SELECT distill.create_endpoint('hidden_teacher', 'http://127.0.0.1:1/secret-path/v1', 'gpt', pg_catalog.jsonb_build_object('api_key', :'key', 'max_retries', 0));
SELECT distill.grant_model('acme_teacher', 'mallory');
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'carol_admin') THEN CREATE ROLE carol_admin LOGIN IN ROLE distill_endpoint_admin; END IF;
END $$;
SQL
  T=120 calls mallory "$MAL_PRE" \
    ep_create "SELECT distill.create_endpoint('mal_ep', 'http://127.0.0.1:1/v1', 'm');" \
    ep_complete "SELECT distill.complete('acme_teacher', 'hi');" \
    ep_chat "SELECT distill.complete('acme_teacher', '[{\"role\": \"user\", \"content\": \"hi\"}]'::jsonb, '{}'::jsonb);" \
    ep_try "SELECT distill.try_complete('acme_teacher', 'hi') IS NULL;" \
    ep_count "SELECT distill.count_tokens('acme_teacher', 'hi');" \
    ep_rows "SELECT count(*) FROM distill.complete_rows('acme_teacher', 'SELECT 1 AS id, ''hi'' AS prompt') WHERE error IS NOT NULL;" \
    ep_view "SELECT string_agg(name || ' ' || api_key, ',') FROM distill.endpoints;" \
    ep_keys "SELECT api_key FROM distill.endpoint_keys;" \
    ep_alter "SELECT distill.alter_endpoint('acme_teacher', '{\"base_url\": \"http://127.0.0.1:2/v1\"}');" \
    ep_grant "SELECT distill.grant_model('acme_teacher', 'public');" \
    ep_drop "SELECT distill.drop_endpoint('acme_teacher');" \
    ep_hidden "SELECT distill.complete('hidden_teacher', 'hi');"
  cat "$work/q.err" >>"$work/mal_sessions.err"
  local all=$OUT$ERR refused
  refused=$(msg ep_complete)
  expect ep_create 42501; expect ep_complete 08006; expect ep_chat 08006; expect ep_try 00000
  expect ep_count 22023; expect ep_rows 00000; expect ep_view 00000; expect ep_keys 42501
  expect ep_alter 42501; expect ep_grant 42501; expect ep_drop 42501; expect ep_hidden 42501
  grep -q '^1$' <<<"$OUT" || BAD+="complete_rows did not return the failed row; "
  grep -q 'acme_teacher stored' <<<"$OUT" || BAD+="distill.endpoints did not show acme_teacher to its grantee; "
  if grep -q 'secret-path' <<<"$all"; then BAD+="the ungranted endpoint's URL shows: $(grep -m1 'secret-path' <<<"$all"); "; fi
  if grep -q 'hidden_teacher' <<<"$(grep '^[^SM]' <<<"$OUT")"; then BAD+="distill.endpoints shows the ungranted endpoint; "; fi
  q mallory <<'SQL' || BAD+="leak query: $(first_error); "
SET client_min_messages = notice;
SELECT * FROM distill.endpoints WHERE mal.leak('endpoints: ' || name || ' ' || base_url || ' ' || options::text);
SQL
  all+=$OUT$ERR
  if grep -q 'hidden_teacher\|secret-path' <<<"$ERR"; then BAD+="the leaky function saw the ungranted endpoint; "; fi
  calls carol_admin "" \
    env_key "SELECT distill.create_endpoint('carol_env', 'http://127.0.0.1:1/v1', 'm', '{\"api_key_env\": \"PGDATA\"}');" \
    file_key "SELECT distill.create_endpoint('carol_file', 'http://127.0.0.1:1/v1', 'm', '{\"api_key_file\": \"/etc/shadow\"}');" \
    own "SELECT distill.create_endpoint('carol_ep', 'http://127.0.0.1:1/v1', 'm', '{\"api_key\": \"carol-key-0000000000\"}');" \
    to_file "SELECT distill.alter_endpoint('carol_ep', '{\"api_key_file\": \"/etc/shadow\", \"api_key\": null}');" \
    others "SELECT distill.alter_endpoint('acme_teacher', '{\"base_url\": \"http://127.0.0.1:2/v1\"}');"
  all+=$OUT$ERR
  expect env_key 42501; expect file_key 42501; expect own 00000; expect to_file 42501; expect others 42501
  if grep -qF "$EP_KEY" <<<"$all$(cat "$work/data/server.log")"; then BAD+="the key appears in an output or the server log; "; fi
  [ "$(psql_in -c "SELECT base_url FROM distill.endpoint_registry WHERE name = 'acme_teacher'")" = http://127.0.0.1:1/v1 ] \
    || BAD+="acme_teacher's URL changed; "
  psql_in -c "SELECT distill.drop_endpoint(name) FROM distill.endpoint_registry" >/dev/null
  [ -z "$BAD" ] || { DETAIL=$BAD; return 1; }
  INFO=$refused
}
check "12: endpoints: mallory (grantee) cannot create, alter, grant, drop or read keys, even through look-alikes; an admin cannot read server files into a key; no key shown" attack_12_endpoints

# ---- 1 (verdict) --------------------------------------------------------------------------------------------------
attack_1_verdict() {
  local su logged warned
  su=$(psql_in -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'")
  logged=$(psql_in -c "SELECT count(*) || ' ' || coalesce(string_agg(DISTINCT what || ' as ' || usr, ', '), '') FROM mal.evil_log")
  warned=$(grep -hE 'WARNING:.*EVIL (as|could|made)' "$work/data/server.log" "$work/mal_sessions.err" | head -n3)
  [ "$su" = f ] || DETAIL+="mallory is a superuser (rolsuper '$su'); "
  [ "${logged%% *}" = 0 ] || DETAIL+="evil events as superuser: ${logged#* }; "
  [ -z "$warned" ] || DETAIL+="$(flat "$warned"); "
  [ -z "$DETAIL" ] || return 1
  INFO="rolsuper f, no look-alike ran as a superuser"
}
check "1: after all of it mallory is not a superuser and none of her look-alikes ran as a superuser" attack_1_verdict

psql_in -c "SELECT distill.finetune('CANCEL', id) FROM distill.job_registry WHERE status IN ('PENDING', 'IN_PROGRESS')" >/dev/null 2>&1
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
