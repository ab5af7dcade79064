#!/usr/bin/env bash
# A fine-tuned model survives a restart and pg_dump/pg_restore: train a small model, note its outputs,
# restart the cluster, dump the database, restore it into a new one, and compare outputs everywhere.
# Needs the extension installed (cargo pgrx install).
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/pg_distill-dump port=55433 db=distill_dump
source tests/test_cluster.sh

status=$(train_small small)
echo "status: $status"
[ "$status" = SUCCESS ] || { echo "FAIL: the small model did not train" >&2; exit 1; }

outputs() {
  psql_db "$1" -c "SELECT string_agg(distill.complete('small', request, '{\"max_tokens\": 6}'), ' | ' ORDER BY id)
                   FROM (SELECT * FROM tickets ORDER BY id LIMIT 3) t"
}
before=$(outputs distill_dump)
base=$(psql_in -c "SELECT string_agg(distill.complete('smollm2-135m', request, '{\"max_tokens\": 6}'), ' | ' ORDER BY id)
                                FROM (SELECT * FROM tickets ORDER BY id LIMIT 3) t")
echo "tuned: $before"
[ "$before" != "$base" ] || { echo "FAIL: the tuned model answers like its base model" >&2; exit 1; }

bash scripts/cluster.sh stop "$work/data"
bash scripts/cluster.sh start "$work/data" $port distill_dump
after_restart=$(outputs distill_dump)
[ "$after_restart" = "$before" ] || { echo "FAIL after restart: $after_restart" >&2; exit 1; }

sudo -u postgres pg_dump -h "$work/data" -p $port -Fc -f "$work/dump" distill_dump
psql_db postgres -c "CREATE DATABASE distill_restored"
sudo -u postgres pg_restore -h "$work/data" -p $port --exit-on-error -d distill_restored "$work/dump"
after_restore=$(outputs distill_restored)
[ "$after_restore" = "$before" ] || { echo "FAIL after restore: $after_restore" >&2; exit 1; }
# The restored registry keeps working: its version sequence continues past the restored rows.
psql_db distill_restored -c "SELECT name, base_model, owner, job_id IS NOT NULL FROM distill.models" | tee "$work/models"
grep -q '^small|smollm2-135m|postgres|t$' "$work/models"
psql_db distill_restored -c "SELECT nextval('distill.model_registry_version_seq') > max(version) FROM distill.model_registry" | grep -qx t
echo "dump_restore: ok (same outputs after restart and after pg_dump/pg_restore)"
