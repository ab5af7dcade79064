#!/usr/bin/env bash
# T through SQL and A, accuracy: fine-tune with distill.finetune() on a throw-away cluster and evaluate
# the tuned model on the test split with distill.evaluate(), for each data set in SETS:
#   10intent   banking77_10intent train (982 rows) -> test (400 rows); the instruction lists the 10 labels,
#              exactly the prompts of engine/examples/bench_train.rs, so the job is benchmark T's
#              "through distill.finetune()" row (same token ids, r, alpha, batch, optimizer, seed).
#   banking77  BANKING77, 77 intents: by default the whole splits (10,003 train rows -> 3,080 test rows;
#              ~80 min of training for 3 epochs on 2 cores here). B77_TRAIN_PER=N B77_TEST_PER=M take a
#              stratified subsample instead: the first N rows of each intent in file order for training and
#              M per intent of the test split (the results' train_rows/test_rows and whole_splits say
#              which). The instruction names no labels.
# Both sets train for 3 epochs by default, distill.finetune()'s own default (EPOCHS_10, EPOCHS_77).
# Writes OUT/<set>.json: the job's DESCRIBE, the worker's peak RSS and evaluate()'s metrics: free text
# ('{"choices": false}'), the model's default (from its stored label set when its training completions
# were one) and (EVAL_CHOICES=1, the default) constrained to the test split's labels ('{"choices": true}').
#   bash bench/finetune_sql.sh        (SETS, EPOCHS_10, EPOCHS_77, B77_TRAIN_PER, B77_TEST_PER, OUT override;
#                                      B10_TRAIN_ROWS and B10_TEST_ROWS shrink the 10intent set for a smoke run)
# Needs the extension installed (cargo pgrx install) and the model (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
SETS=${SETS:-"10intent banking77"} OUT=${OUT:-/tmp/pg_distill-bench-finetune}
EPOCHS_10=${EPOCHS_10:-3} EPOCHS_77=${EPOCHS_77:-3} B77_TRAIN_PER=${B77_TRAIN_PER:-all} B77_TEST_PER=${B77_TEST_PER:-all}
EVAL_CHOICES=${EVAL_CHOICES:-1}
B10_TRAIN_ROWS=${B10_TRAIN_ROWS:-100000} B10_TEST_ROWS=${B10_TEST_ROWS:-100000}
# They go into SQL text: a clear error here rather than a syntax error from psql later.
for v in EPOCHS_10 EPOCHS_77 B10_TRAIN_ROWS B10_TEST_ROWS; do [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a whole number >= 1, got '${!v}'" >&2; exit 2; }; done
for v in B77_TRAIN_PER B77_TEST_PER; do [[ ${!v} =~ ^([1-9][0-9]*|all)$ ]] || { echo "$v must be a whole number >= 1 or all, got '${!v}'" >&2; exit 2; }; done
b77=${B77_DIR:-$root/../shared/data/banking77}
if [[ " $SETS " == *" banking77 "* && ! -f "$b77/train.csv" ]]; then
  echo "BANKING77 not found in $b77 (set B77_DIR to the folder with train.csv and test.csv)" >&2; exit 1
fi
mkdir -p "$OUT"

work=/tmp/pg_distill-bench-ft port=55461 db=distill_bench
source scripts/fresh_cluster.sh
extension_on_two_threads

# split table: n keeps the file order (bench_train takes the first rows of test.csv as its eval set).
load() { # table, csv
  cp "$2" "$work/$1.csv" && chown postgres "$work/$1.csv"
  psql_in -c "CREATE TABLE $1 (n serial, id text, text text, label text)" \
          -c "COPY $1 (id, text, label) FROM '$work/$1.csv' WITH (FORMAT csv, HEADER true)"
}

# The job's options: benchmark T's settings (r 8, alpha 16, all seven targets, batch 8, AdamW lr 1e-3).
options() { echo "{\"max_epochs\": $1, \"lora_r\": 8, \"lora_alpha\": 16, \"batch_size\": 8, \"learning_rate\": 0.001,
  \"target_modules\": [\"q\", \"k\", \"v\", \"o\", \"gate\", \"up\", \"down\"], \"seed\": 42}"; }

run_set() { # name (results file), SQL prefix of its views, the views' SQL, epochs, prefix of the loaded tables
  local name=$1 t=$2 epochs=$4 raw=$5
  psql_in -c "$3"
  echo "== $name: distill.finetune() ($(psql_in -c "SELECT count(*) FROM ${t}_train") training rows, $epochs epoch(s))" >&2
  local id
  id=$(psql_in -c "SELECT distill.finetune('CREATE', '${t}_model', 'smollm2-135m',
        'SELECT prompt, completion FROM ${t}_train', 'SELECT prompt, completion FROM ${t}_valid',
        '$(options "$epochs")')")
  local status
  status=$(psql_in -c "SET client_min_messages = warning" -c "SELECT distill.wait('$id', 86400)->>'status'")
  if [ "$status" != SUCCESS ]; then
    psql_in -c "SELECT distill.finetune('DESCRIBE', '$id')" >&2
    echo "job $id ended $status" >&2; exit 1
  fi
  echo "== $name: distill.evaluate() on $(psql_in -c "SELECT count(*) FROM ${t}_test") test rows" >&2
  # The worker's peak RSS (VmHWM). Workers live on across sets: for the second set it is the larger of both jobs.
  psql_in >"$OUT/$name.json" <<SQL
SELECT json_build_object(
  'set', '$name',
  'describe', distill.finetune('DESCRIBE', '$id'),
  'worker_peak_rss_mib', (SELECT max((regexp_match(pg_read_file('/proc/' || pid || '/status'), 'VmHWM:\s+(\d+)'))[1]::int) / 1024.0
                          FROM pg_stat_activity WHERE backend_type LIKE 'pg_distill worker%'),
  'train_rows', (SELECT count(*) FROM ${t}_train),
  'test_rows', (SELECT count(*) FROM ${t}_test),
  'labels', (SELECT count(DISTINCT completion) FROM ${t}_train),
  'whole_splits', (SELECT count(*) FROM ${t}_train) = (SELECT count(*) FROM ${raw}_train)
                  AND (SELECT count(*) FROM ${t}_test) = (SELECT count(*) FROM ${raw}_test),
  'evaluate', distill.evaluate('${t}_model', 'SELECT prompt, completion FROM ${t}_test', '{"choices": false}'),
  'evaluate_default', distill.evaluate('${t}_model', 'SELECT prompt, completion FROM ${t}_test')$(
    [ "$EVAL_CHOICES" = 1 ] && echo ",
  'evaluate_choices', distill.evaluate('${t}_model', 'SELECT prompt, completion FROM ${t}_test', '{\"choices\": true}')"));
SQL
  psql_in -c "SELECT distill.finetune('DESCRIBE', '$id')->'training_result'" >&2
  python3 -c "import json,sys; e=json.load(open(sys.argv[1]))['evaluate']; print('accuracy (free)', e['accuracy'], 'macro_f1', e['macro_f1'], 'seconds', e['seconds'])" "$OUT/$name.json" >&2
}

for set in $SETS; do
  case $set in
    10intent)
      load raw10_train data/banking77_10intent/train.csv
      load raw10_test data/banking77_10intent/test.csv
      # bench_train.rs's instruction: the labels in byte order, then the request.
      run_set 10intent b10 "
        CREATE VIEW b10_prompts AS SELECT 'Classify this customer request into one of: '
          || (SELECT string_agg(label, ', ' ORDER BY label COLLATE \"C\") FROM (SELECT DISTINCT label FROM raw10_train) l)
          || '. Reply with the category only.' || chr(10) || 'Request: ' AS head;
        CREATE VIEW b10_train AS SELECT head || text AS prompt, label AS completion FROM raw10_train, b10_prompts WHERE n <= $B10_TRAIN_ROWS ORDER BY n;
        CREATE VIEW b10_valid AS SELECT head || text AS prompt, label AS completion FROM raw10_test, b10_prompts WHERE n <= least(200, $B10_TEST_ROWS) ORDER BY n;
        CREATE VIEW b10_test AS SELECT head || text AS prompt, label AS completion FROM raw10_test, b10_prompts WHERE n <= $B10_TEST_ROWS ORDER BY n;" \
        "$EPOCHS_10" raw10
      ;;
    banking77)
      load raw77_train "$b77/train.csv"
      # all: the whole training split; its validation loss is then read on the first 2 test rows of each
      # intent (reported only: nothing is chosen by it, as 10intent's first 200 test rows).
      if [ "$B77_TRAIN_PER" = all ]; then
        B77_TRAIN_PER=1000000 b77_valid_rows="b77_ranked_test WHERE k <= 2"
      else
        b77_valid_rows="b77_ranked WHERE k > $B77_TRAIN_PER AND k <= $B77_TRAIN_PER + 2"
      fi
      [ "$B77_TEST_PER" = all ] && B77_TEST_PER=1000000
      load raw77_test "$b77/test.csv"
      # Stratified: the first rows of each intent in file order; the validation set (per-epoch loss
      # and DESCRIBE's metrics) is 2 more training-split rows per intent, not test rows (with
      # B77_TRAIN_PER=all, see above).
      run_set banking77 b77 "
        CREATE VIEW b77_ranked AS SELECT *, row_number() OVER (PARTITION BY label ORDER BY n) AS k FROM raw77_train;
        CREATE VIEW b77_ranked_test AS SELECT *, row_number() OVER (PARTITION BY label ORDER BY n) AS k FROM raw77_test;
        CREATE VIEW b77_train AS SELECT 'Classify this banking customer request by its intent. Reply with the intent only.'
          || chr(10) || 'Request: ' || text AS prompt, label AS completion FROM b77_ranked WHERE k <= $B77_TRAIN_PER ORDER BY n;
        CREATE VIEW b77_valid AS SELECT 'Classify this banking customer request by its intent. Reply with the intent only.'
          || chr(10) || 'Request: ' || text AS prompt, label AS completion FROM $b77_valid_rows ORDER BY n;
        CREATE VIEW b77_test AS SELECT 'Classify this banking customer request by its intent. Reply with the intent only.'
          || chr(10) || 'Request: ' || text AS prompt, label AS completion FROM b77_ranked_test WHERE k <= $B77_TEST_PER ORDER BY n;" \
        "$EPOCHS_77" raw77
      ;;
    *) echo "unknown set $set (10intent, banking77)" >&2; exit 2 ;;
  esac
done
