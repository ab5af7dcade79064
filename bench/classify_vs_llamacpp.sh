#!/usr/bin/env bash
# C, classification: ROWS ticket rows (the 151 shipped tickets repeated and shuffled, seeded) with the
# quickstart's instruction prompt, greedy, at most 12 new tokens, 2 threads each:
#   pg_distill   SELECT distill.complete('smollm2-135m', prompt, '{"max_tokens": 12}') FROM rows
#                (one backend, per weight format in FORMATS), and with constrained choices;
#   llama.cpp    llama-cpp-python on the same GGUF and prompts, a Python loop, and the same loop as a
#                PL/Python function inside Postgres (what a user would otherwise write).
# Prints rows/s ratios first, per-process peak RSS, and where outputs disagree with llama.cpp.
#   bash bench/classify_vs_llamacpp.sh          (ROWS=1000, FORMATS="file q8_0", OUT=/tmp/... override)
# Needs the extension installed (cargo pgrx install) and bench/venv_llama.sh's venv (run here).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
ROWS=${ROWS:-1000} FORMATS=${FORMATS:-"file q8_0"} OUT=${OUT:-/tmp/pg_distill-bench-classify}
gguf=$root/models/SmolLM2-135M-Instruct.Q4_1.gguf
bash bench/venv_llama.sh
rm -rf "$OUT" && mkdir -p "$OUT" && chmod 755 "$OUT"
python3 bench/make_ticket_rows.py "$ROWS" "$OUT" > "$OUT/rows.json"

# A throw-away cluster; PL/Python if the package is there (apt-get install postgresql-plpython3-15).
work=/tmp/pg_distill-bench port=55460 db=distill_bench
source scripts/fresh_cluster.sh
chmod 644 "$OUT"/* && chown -R postgres "$OUT"
psql_in -c "CREATE EXTENSION pg_distill" -c "CREATE TABLE rows (row int PRIMARY KEY, id text, label text, prompt text)" \
        -c "COPY rows FROM '$OUT/rows.csv' WITH (FORMAT csv)"

# One session per run: load the model with one short call, then time the query alone; the
# backend's peak RSS comes from /proc (VmHWM).
run_sql() { # name, settings, expression over prompt
  psql_in >"$OUT/$1.log" <<SQL
$2
SELECT distill.complete('smollm2-135m', 'Say yes.', '{"max_tokens": 1}') IS NOT NULL AS warm \gset
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
CREATE TEMP TABLE out AS SELECT row, $3 AS output FROM rows ORDER BY row;
SELECT extract(epoch FROM clock_timestamp()) - :t0 AS seconds \gset
\o $OUT/$1.out
SELECT json_agg(btrim(output, E' \t\r\n') ORDER BY row) FROM out;
\o
SELECT json_build_object('name', '$1', 'seconds', :seconds,
         'peak_rss_mib', (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'VmHWM:\s+(\d+)'))[1]::int / 1024.0,
         'accuracy', (SELECT avg((btrim(o.output, E' \t\r\n') = r.label)::int) FROM out o JOIN rows r USING (row)));
SQL
  tail -1 "$OUT/$1.log" >"$OUT/$1.json"
}
labels='{"choices": ["Add new line", "Closing account", "Roaming fees", "Slow data speed"]}'
for f in $FORMATS; do
  echo "== pg_distill, weight_format $f" >&2
  run_sql "pg_distill_$f" "SET distill.weight_format = '$f';" "distill.complete('smollm2-135m', prompt, '{\"max_tokens\": 12}')"
done
echo "== pg_distill, file weights, choices (constrained, stops when the label is determined)" >&2
run_sql pg_distill_choices "SET distill.weight_format = 'file';" "distill.complete('smollm2-135m', prompt, '$labels')"

echo "== llama.cpp, Python loop" >&2
bench/.venv-llama/bin/python bench/llamacpp_classify.py --gguf "$gguf" --prompts "$OUT/prompts.json" \
  --max-tokens 12 --threads 2 --out "$OUT/llamacpp.full.json" >/dev/null
python3 - "$OUT" <<'PY'
import csv, json, sys
out = sys.argv[1]
d = json.load(open(f"{out}/llamacpp.full.json"))
replies = [o.strip() for o in d["outputs"]]
labels = [r[2] for r in csv.reader(open(f"{out}/rows.csv", newline=""))]
json.dump(replies, open(f"{out}/llamacpp_python.out", "w"))
json.dump({"name": "llamacpp_python", "seconds": d["seconds"], "peak_rss_mib": d["peak_rss_mib"],
           "accuracy": sum(a == b for a, b in zip(replies, labels)) / len(labels)}, open(f"{out}/llamacpp_python.json", "w"))
PY

if psql_in -c "CREATE EXTENSION plpython3u" 2>/dev/null; then
  echo "== llama.cpp, PL/Python function" >&2
  psql_in -f bench/plpython_llamacpp.sql >/dev/null
  run_sql llamacpp_plpython "SET bench.llamacpp_dir = '$root/bench'; SET bench.llamacpp_gguf = '$gguf';" "bench_llamacpp_complete(prompt)"
else
  echo "(PL/Python not installed: apt-get install postgresql-plpython3-15 to add that peer)" >&2
fi

python3 bench/report.py classify "$OUT"
