#!/usr/bin/env bash
# E, e2e_nlg through SQL (issue 24): two students tuned with distill.finetune() (3 epochs, the defaults)
# and scored with distill.evaluate() on the test split, on a throw-away cluster:
#   extraction  prompt: a description, completion: its meaning representation as a JSON object
#               (mr_json). Scored free and with a response_format (the slots' JSON schema, enums from
#               the data set's README): valid-JSON rate, exact object match, per-field accuracy, and
#               the seconds of each run (the masking cost in generated tokens/s).
#   generation  prompt: the meaning representation, completion: a description. Scored multi-reference
#               (every description of a test MR is a reference of that MR, as the E2E challenge scored):
#               BLEU, ROUGE-1/2/L, chrF.
# Subsets (the full splits take hours of CPU here): PER_MR_TRAIN descriptions of each training MR
# (default 2: 874 rows of the 437 MRs; "all": 3,743 rows) and, for extraction, PER_MR_TEST of each
# test MR (default 1: 110 rows; "all": 929). Generation always scores the 110 test MRs against all 929
# references. The results record the row counts.
#   bash bench/e2e_sql.sh          (TASKS="extraction generation", PER_MR_TRAIN, PER_MR_TEST, EPOCHS, OUT)
# Needs the extension installed (scripts/install_extension.sh) and the model (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-"extraction generation"} OUT=${OUT:-$PWD/bench/results/E}
PER_MR_TRAIN=${PER_MR_TRAIN:-2} PER_MR_TEST=${PER_MR_TEST:-1} EPOCHS=${EPOCHS:-3}
for v in PER_MR_TRAIN PER_MR_TEST; do [[ ${!v} =~ ^([1-9][0-9]*|all)$ ]] || { echo "$v must be a whole number >= 1 or all" >&2; exit 2; }; done
[[ $EPOCHS =~ ^[1-9][0-9]*$ ]] || { echo "EPOCHS must be a whole number >= 1" >&2; exit 2; }
[ "$PER_MR_TRAIN" = all ] && PER_MR_TRAIN=1000000
[ "$PER_MR_TEST" = all ] && PER_MR_TEST=1000000
data=${E2E_DIR:-$PWD/../shared/data/e2e_nlg}
mkdir -p "$OUT"

work=/tmp/pg_distill-bench-e2e port=55463 db=distill_bench
source scripts/fresh_cluster.sh
extension_on_two_threads
for split in train test; do
  cp "$data/$split.csv" "$work/e2e_$split.csv" && chown postgres "$work/e2e_$split.csv"
  psql_in -c "CREATE TABLE e2e_$split (n serial, id int, mr text, mr_json text, ref text)" \
          -c "COPY e2e_$split (id, mr, mr_json, ref) FROM '$work/e2e_$split.csv' WITH (FORMAT csv, HEADER true)"
done
psql_in <<SQL
CREATE VIEW e2e_train_ranked AS SELECT *, row_number() OVER (PARTITION BY mr ORDER BY n) AS k FROM e2e_train;
CREATE VIEW e2e_test_ranked AS SELECT *, row_number() OVER (PARTITION BY mr ORDER BY n) AS k FROM e2e_test;
-- Validation (the kept epoch, DESCRIBE's metrics): the next training description of 40 training MRs.
CREATE VIEW ex_train AS SELECT ref AS prompt, mr_json AS completion FROM e2e_train_ranked WHERE k <= $PER_MR_TRAIN ORDER BY n;
CREATE VIEW ex_valid AS SELECT ref AS prompt, mr_json AS completion FROM e2e_train_ranked
  WHERE k = $PER_MR_TRAIN + 1 ORDER BY n LIMIT 40;
CREATE VIEW ex_test AS SELECT ref AS prompt, mr_json AS completion FROM e2e_test_ranked WHERE k <= $PER_MR_TEST ORDER BY n;
CREATE VIEW gen_train AS SELECT 'Describe this restaurant in one sentence: ' || mr AS prompt, ref AS completion
  FROM e2e_train_ranked WHERE k <= $PER_MR_TRAIN ORDER BY n;
CREATE VIEW gen_valid AS SELECT 'Describe this restaurant in one sentence: ' || mr AS prompt, ref AS completion
  FROM e2e_train_ranked WHERE k = $PER_MR_TRAIN + 1 ORDER BY n LIMIT 40;
CREATE VIEW gen_test AS SELECT 'Describe this restaurant in one sentence: ' || mr AS prompt, ref AS completion
  FROM e2e_test ORDER BY n;
SQL
# The slots' schema (bench/e2e_schema.json), from the data set's README: closed value sets become enums.
# Passed as text: its properties' order is the order the completions (mr_json) use and llguidance
# writes them in; as jsonb its keys would be sorted (shortest first).
schema=$(cat bench/e2e_schema.json)

tune() { # prefix
  local id status
  id=$(psql_in -c "SELECT distill.finetune('CREATE', '$1_model', 'smollm2-135m',
        'SELECT prompt, completion FROM $1_train', 'SELECT prompt, completion FROM $1_valid',
        '{\"max_epochs\": $EPOCHS}')")
  echo "== $1: distill.finetune() on $(psql_in -c "SELECT count(*) FROM $1_train") rows, job $id" >&2
  status=$(psql_in -c "SET client_min_messages = warning" -c "SELECT distill.wait('$id', 86400)->>'status'")
  if [ "$status" != SUCCESS ]; then
    psql_in -c "SELECT distill.finetune('DESCRIBE', '$id')" >&2; echo "job $id ended $status" >&2; exit 1
  fi
  echo "$id"
}

for task in $TASKS; do
  case $task in
    extraction)
      id=$(tune ex)
      echo "== extraction: distill.evaluate() on $(psql_in -c "SELECT count(*) FROM ex_test") test rows, free and with response_format" >&2
      psql_in >"$OUT/extraction.json" <<SQL
SELECT json_build_object(
  'task', 'extraction', 'train_rows', (SELECT count(*) FROM ex_train), 'test_rows', (SELECT count(*) FROM ex_test),
  'describe', distill.finetune('DESCRIBE', '$id'),
  'evaluate_free', distill.evaluate('ex_model', 'SELECT prompt, completion FROM ex_test'),
  'evaluate_response_format', distill.evaluate('ex_model', 'SELECT prompt, completion FROM ex_test',
     jsonb_build_object('response_format', jsonb_build_object('type', 'json', 'schema', '$schema'::text))),
  'base_model_response_format', distill.evaluate('smollm2-135m',
     'SELECT ''Extract the restaurant''''s details as a JSON object.'' || chr(10) || ''Text: '' || prompt AS prompt, completion FROM ex_test',
     jsonb_build_object('response_format', jsonb_build_object('type', 'json', 'schema', '$schema'::text))));
SQL
      ;;
    generation)
      id=$(tune gen)
      echo "== generation: distill.evaluate() on $(psql_in -c "SELECT count(DISTINCT prompt) FROM gen_test") test MRs (multi-reference)" >&2
      psql_in >"$OUT/generation.json" <<SQL
SELECT json_build_object(
  'task', 'generation', 'train_rows', (SELECT count(*) FROM gen_train),
  'test_mrs', (SELECT count(DISTINCT prompt) FROM gen_test), 'test_references', (SELECT count(*) FROM gen_test),
  'describe', distill.finetune('DESCRIBE', '$id'),
  'evaluate', distill.evaluate('gen_model', 'SELECT prompt, completion FROM gen_test'),
  'base_model', distill.evaluate('smollm2-135m', 'SELECT prompt, completion FROM gen_test'));
SQL
      ;;
    *) echo "unknown task $task (extraction, generation)" >&2; exit 2 ;;
  esac
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({k: v for k, v in d.items() if k != 'describe'}, indent=1)[:3000])" "$OUT/$task.json" >&2
done
