#!/usr/bin/env bash
# Hot standby: a physical streaming replica (pg_basebackup -R) serves the models the primary has.
# On this machine: a primary with pg_distill, a model tuned there; then a standby made from it.
#   - the tuned model and the base model answer on the standby with the primary's text;
#     evaluate(), count_tokens(), the views, DESCRIBE and the usage counters work there;
#   - every function that writes (finetune CREATE/CANCEL, drop_model, grant/revoke_model,
#     import_adapter, create/alter/drop_endpoint) fails there with SQLSTATE 25006, "read-only ...
#     run it on the primary";
#   - a standby session that has the tuned model cached notices when the primary drops it;
#   - the standby's worker stays idle (no errors in its log) and no backend crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/pg_distill-replica port=55442 db=distill_replica
source tests/test_cluster.sh
standby=$work/standby sport=55443
cleanup() {
  [ -z "${KEEP:-}" ] || return 0  # KEEP=1: leave both servers running, to look into a failure
  sudo -u postgres /usr/lib/postgresql/15/bin/pg_ctl -D "$standby" -m fast -w stop >/dev/null 2>&1 || true
  bash "$root/scripts/cluster.sh" stop "$work/data"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -15 "$standby/server.log" >&2 || true; exit 1; }
psql_sb() { sudo -u postgres psql -X -q -At -v ON_ERROR_STOP=1 -h "$standby" -p "$sport" -d "$db" "$@"; }

job=$(psql_in -c "SELECT distill.finetune('CREATE', 'replica_model', 'smollm2-135m',
        'SELECT request AS prompt, label AS completion FROM tickets ORDER BY id LIMIT 24', NULL,
        '{\"max_epochs\": 1, \"target_modules\": [\"q\", \"v\"], \"learning_rate\": 0.005}')")
status=$(psql_in -c "SET client_min_messages = warning" -c "SELECT distill.wait('$job', 600)->>'status'")
[ "$status" = SUCCESS ] || fail "the primary's job ended $status"
echo "ok: model tuned on the primary ($job)"

# The standby: a base backup with streaming replication configured (-R), on its own port and socket.
sudo -u postgres pg_basebackup -h "$work/data" -p "$port" -D "$standby" -R -X stream -c fast 2>&1 | grep -v "skipping special file" || true
printf "port = %s\nunix_socket_directories = '%s'\n" "$sport" "$standby" | sudo -u postgres tee -a "$standby/postgresql.conf" >/dev/null
sudo -u postgres /usr/lib/postgresql/15/bin/pg_ctl -D "$standby" -l "$standby/server.log" -w start >/dev/null
[ "$(psql_sb -c "SELECT pg_is_in_recovery()")" = t ] || fail "the standby is not in recovery"
caught_up() { # waits until the standby has replayed everything the primary has written
  local lsn; lsn=$(psql_in -c "SELECT pg_current_wal_lsn()")
  for _ in $(seq 100); do
    [ "$(psql_sb -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" = t ] && return 0
    sleep 0.1
  done
  fail "the standby did not replay up to $lsn"
}
caught_up
echo "ok: standby streaming"

prompt="I was charged roaming fees on my trip to Spain, please refund them."
ask="SELECT distill.complete('replica_model', '$prompt', '{\"max_tokens\": 8}') || ' | ' ||
            distill.complete('smollm2-135m', '$prompt', '{\"max_tokens\": 8}')"
on_primary=$(psql_in -c "$ask") on_standby=$(psql_sb -c "$ask")
echo "  primary: $on_primary"
echo "  standby: $on_standby"
[ "$on_primary" = "$on_standby" ] || fail "the standby answers differently"
echo "ok: the tuned and the base model give the primary's text on the standby"

reads=$(psql_sb -c "SELECT (distill.evaluate('replica_model', 'SELECT request AS prompt, label AS completion FROM tickets ORDER BY id LIMIT 4')->>'rows')
                    || ' ' || distill.count_tokens('replica_model', 'hello world')
                    || ' ' || (SELECT count(*) FROM distill.models)
                    || ' ' || (distill.finetune('DESCRIBE', '$job')->>'status')
                    || ' ' || (SELECT completion_calls FROM distill.usage WHERE model = 'replica_model')")
[ "$reads" = "4 2 1 SUCCESS 5" ] || fail "reads on the standby gave '$reads', expected '4 2 1 SUCCESS 5' (5 calls: the complete above, 4 in evaluate)"
echo "ok: evaluate, count_tokens, the views, DESCRIBE and usage counting work on the standby ($reads)"

writes=(
  "SELECT distill.finetune('CREATE', 'm2', 'smollm2-135m', 'SELECT request AS prompt, label AS completion FROM tickets')"
  "SELECT distill.finetune('CANCEL', '$job')"
  "SELECT distill.drop_model('replica_model')"
  "SELECT distill.grant_model('replica_model', 'public')"
  "SELECT distill.revoke_model('replica_model', 'public')"
  "SELECT distill.import_adapter('m3', 'smollm2-135m', '\\x504b0506'::bytea)"
  "SELECT distill.create_endpoint('e', 'http://127.0.0.1:1/v1', 'm')"
  "SELECT distill.alter_endpoint('e', '{}')"
  "SELECT distill.drop_endpoint('e')"
)
for w in "${writes[@]}"; do
  err=$(psql_sb -v VERBOSITY=verbose -c "$w" 2>&1 >/dev/null || true)
  [[ "$err" == *"ERROR:  25006: read-only: "*"run it on the primary"* ]] || fail "on the standby, $w: $err"
done
echo "ok: the ${#writes[@]} writing calls fail on the standby with 25006, e.g. $(psql_sb -c "${writes[2]}" 2>&1 | head -1)"

# One standby session caches the tuned model, the primary drops it, the session notices.
out=$(sudo -u postgres psql -X -q -At -h "$standby" -p "$sport" -d "$db" 2>&1 <<SQL || true
SELECT distill.complete('replica_model', '$prompt', '{"max_tokens": 4}') IS NOT NULL AS cached;
\! psql -X -q -At -h $work/data -p $port -d $db -c "SELECT distill.drop_model('replica_model')"
DO \$\$ BEGIN
  FOR i IN 1..100 LOOP
    EXIT WHEN NOT EXISTS (SELECT FROM distill.models WHERE name = 'replica_model');
    PERFORM pg_sleep(0.1);
  END LOOP;
END \$\$;
SELECT count(*) AS still_listed FROM distill.models WHERE name = 'replica_model';
SELECT distill.complete('replica_model', '$prompt', '{"max_tokens": 4}');
SQL
)
echo "$out" | sed 's/^/  /'
# cached (t), drop_model's empty reply, still listed (0), then the error.
[ "$(head -n1 <<<"$out")" = t ] && grep -qx 0 <<<"$out" && grep -q 'ERROR:  model "replica_model" not found' <<<"$out" \
  || fail "the standby session did not notice the drop"
echo "ok: a standby session with the model cached notices the primary's drop_model"

! grep -E "pg_distill worker: |terminated by signal" "$standby/server.log" "$work/data/server.log" \
  || fail "errors or crashes in the logs (above)"
echo "ok: the standby's worker stayed idle, no backend crashed"
