#!/usr/bin/env bash
# B, batch runs: distill.complete_rows() against complete() per row, in one run, 2 threads.
#   local     ROWS ticket rows (phase C's workload: the 151 shipped tickets repeated and shuffled, the
#             quickstart's instruction prompt, greedy, at most 12 new tokens, the base model):
#             SELECT complete(...) FROM rows  vs  complete_rows(...) with batch_size 16 (default) and 32;
#             outputs compared row by row
#   endpoint  ENDPOINT_ROWS of them through llama-cpp-python's server (tests/endpoint/servers.sh) as an
#             endpoint: complete_rows with max_in_flight 8 (the default) vs 1. That server runs one
#             request at a time (one model behind one lock), so requests in flight only overlap the
#             HTTP round trips there; SLOW_ROWS more go through the fault server's "slow" mode, which
#             adds 3 s before each request as a remote API's latency would: 8 in flight vs 1 again
# Writes $OUT/batch.json and prints ratios first.
#   bash bench/complete_rows.sh    (ROWS=1000, ENDPOINT_ROWS=200, SLOW_ROWS=40, OUT=/tmp/pg_distill-bench-batch)
# Needs the extension installed (scripts/install_extension.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000} ENDPOINT_ROWS=${ENDPOINT_ROWS:-200} SLOW_ROWS=${SLOW_ROWS:-40} OUT=${OUT:-/tmp/pg_distill-bench-batch}
rm -rf "$OUT" && mkdir -p "$OUT" && chmod 755 "$OUT"
python3 bench/make_ticket_rows.py "$ROWS" "$OUT" >/dev/null

work=/tmp/pg_distill-bench-batch-cluster port=55462 db=distill_bench
source scripts/fresh_cluster.sh
servers=$work/servers
trap 'bash "$root/tests/endpoint/servers.sh" stop "$servers" || true; bash "$root/scripts/cluster.sh" stop "$work/data"' EXIT
chmod 644 "$OUT"/* && chown -R postgres "$OUT"
extension_on_two_threads
psql_in -c "CREATE TABLE rows (row int PRIMARY KEY, id text, label text, prompt text)" \
        -c "COPY rows FROM '$OUT/rows.csv' WITH (FORMAT csv)"

# One session per run: the model loaded by one short call, then the query alone timed.
run() { # name, SQL making temp table out(row int, output text) from table rows
  psql_in >"$OUT/$1.log" <<SQL
SELECT distill.complete('smollm2-135m', 'Say yes.', '{"max_tokens": 1}') IS NOT NULL AS warm \gset
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$2;
SELECT extract(epoch FROM clock_timestamp()) - :t0 AS seconds \gset
CREATE TABLE result_$1 AS SELECT * FROM out;
SELECT json_build_object('name', '$1', 'seconds', :seconds, 'rows', (SELECT count(*) FROM out),
                         'errors', (SELECT count(*) FROM out WHERE output IS NULL));
SQL
  tail -1 "$OUT/$1.log" >"$OUT/$1.json"
  echo "  $1: $(cat "$OUT/$1.json")" >&2
}
opts='{"max_tokens": 12}'
echo "== local: complete() per row, then complete_rows()" >&2
run per_row "CREATE TEMP TABLE out AS SELECT row, distill.complete('smollm2-135m', prompt, '$opts') AS output FROM rows"
run batch16 "CREATE TEMP TABLE out AS SELECT id::int AS row, completion AS output
             FROM distill.complete_rows('smollm2-135m', 'SELECT row AS id, prompt FROM rows', '$opts')"
run batch32 "CREATE TEMP TABLE out AS SELECT id::int AS row, completion AS output
             FROM distill.complete_rows('smollm2-135m', 'SELECT row AS id, prompt FROM rows', '{\"max_tokens\": 12, \"batch_size\": 32}')"
same() { psql_in -c "SELECT count(*) FROM result_per_row a JOIN result_$1 b USING (row) WHERE a.output IS NOT DISTINCT FROM b.output"; }
same16=$(same batch16) same32=$(same batch32)

echo "== endpoint: llama-cpp-python's server, 8 requests in flight vs 1" >&2
mkdir -p "$servers" && bash tests/endpoint/servers.sh start "$servers" >&2
llama=$(cat "$servers/llama.port") fault=$(cat "$servers/fault.port")
psql_in -c "SELECT distill.create_endpoint('llama', 'http://127.0.0.1:$llama/v1', 'smollm2', '{\"extra_body\": {\"repeat_penalty\": 1.0}}')" \
        -c "SELECT distill.create_endpoint('slow', 'http://127.0.0.1:$fault/slow/v1', 'smollm2', '{\"extra_body\": {\"repeat_penalty\": 1.0}}')" >/dev/null
for n in 8 1; do
  run "endpoint_$n" "CREATE TEMP TABLE out AS SELECT id::int AS row, completion AS output
                     FROM distill.complete_rows('llama', 'SELECT row AS id, prompt FROM rows WHERE row <= $ENDPOINT_ROWS',
                                                '{\"max_tokens\": 12, \"max_in_flight\": $n}')"
  run "slow_$n" "CREATE TEMP TABLE out AS SELECT id::int AS row, completion AS output
                 FROM distill.complete_rows('slow', 'SELECT row AS id, prompt FROM rows WHERE row <= $SLOW_ROWS',
                                            '{\"max_tokens\": 12, \"max_in_flight\": $n}')"
done
same_ep=$(psql_in -c "SELECT count(*) FROM result_endpoint_1 a JOIN result_endpoint_8 b USING (row) WHERE a.output IS NOT DISTINCT FROM b.output")

python3 - "$OUT" "$same16" "$same32" "$same_ep" <<'PY'
import json, sys
out, same16, same32, same_ep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runs = {n: json.load(open(f"{out}/{n}.json")) for n in ("per_row", "batch16", "batch32", "endpoint_8", "endpoint_1", "slow_8", "slow_1")}
for r in runs.values():
    r["rows_per_s"] = r["rows"] / r["seconds"]
base, ep1 = runs["per_row"]["rows_per_s"], runs["endpoint_1"]["rows_per_s"]
result = {
    "rows": runs["per_row"]["rows"], "endpoint_rows": runs["endpoint_1"]["rows"], "runs": runs,
    "speedup_batch16": runs["batch16"]["rows_per_s"] / base, "speedup_batch32": runs["batch32"]["rows_per_s"] / base,
    "speedup_endpoint_8_vs_1": runs["endpoint_8"]["rows_per_s"] / ep1,
    "slow_rows": runs["slow_1"]["rows"], "speedup_slow_8_vs_1": runs["slow_8"]["rows_per_s"] / runs["slow_1"]["rows_per_s"],
    "same_outputs_batch16": same16, "same_outputs_batch32": same32, "same_outputs_endpoint_8_vs_1": same_ep,
}
json.dump(result, open(f"{out}/batch.json", "w"), indent=1)
print(f"complete_rows (batch 16) vs complete() per row: {result['speedup_batch16']:.2f}x "
      f"({runs['batch16']['rows_per_s']:.2f} vs {base:.2f} rows/s), same output on {same16}/{result['rows']} rows")
print(f"complete_rows (batch 32) vs complete() per row: {result['speedup_batch32']:.2f}x "
      f"({runs['batch32']['rows_per_s']:.2f} rows/s), same output on {same32}/{result['rows']} rows")
print(f"endpoint, 8 in flight vs 1: {result['speedup_endpoint_8_vs_1']:.2f}x "
      f"({runs['endpoint_8']['rows_per_s']:.2f} vs {ep1:.2f} rows/s), same output on {same_ep}/{result['endpoint_rows']} rows")
print(f"endpoint with 3 s of latency per request, 8 in flight vs 1: {result['speedup_slow_8_vs_1']:.2f}x "
      f"({runs['slow_8']['rows_per_s']:.2f} vs {runs['slow_1']['rows_per_s']:.2f} rows/s, {result['slow_rows']} rows)")
PY
