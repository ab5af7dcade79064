#!/usr/bin/env bash
# M, memory of many sessions: SESSIONS sessions (default 8) at once, each running complete() on one
# tuned model over ROWS ticket rows (default 48; distill.threads = 1 each), with the base model's weights
# shared through its prepared file (distill.share_weights = on, the default) and with a private copy per
# session (off: what every session did before). Then one session alone, each way.
# Memory is each backend's PSS (/proc/PID/smaps_rollup) read while every session is still connected
# after its rows, summed; rows/s is all rows over the wall time from the first start to the last end.
# Writes $OUT/memory.json and prints ratios first.
#   bash bench/shared_weights.sh    (SESSIONS=8 ROWS=48 OUT=/tmp/pg_distill-bench-memory)
# Needs the extension installed (scripts/install_extension.sh) and the model set up.
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-8} ROWS=${ROWS:-48} OUT=${OUT:-/tmp/pg_distill-bench-memory}
rm -rf "$OUT" && mkdir -p "$OUT" && chmod 755 "$OUT"
work=/tmp/pg_distill-bench-memory-cluster port=55463 db=distill_bench
source tests/test_cluster.sh  # pg_distill and the training tickets in table `tickets`
psql_in -c "CREATE TABLE done (mode text, session int, t0 float8, t1 float8, pid int, rows int)"

# The tuned model: a small classifier (24 rows, one epoch, q and v).
job=$(psql_in -c "SELECT distill.finetune('CREATE', 'tuned', 'smollm2-135m',
  'SELECT request AS prompt, label AS completion FROM tickets ORDER BY id LIMIT 24', NULL,
  '{\"max_epochs\": 1, \"target_modules\": [\"q\", \"v\"], \"seed\": 7}')")
status=$(psql_in -c "SET client_min_messages = warning" -c "SELECT distill.wait('$job', 900)->>'status'")
[ "$status" = SUCCESS ] || { echo "the tuning job ended $status" >&2; exit 1; }
# The prepared file exists before anything is measured (its first writer's peak is not a session's).
psql_in -c "SELECT distill.complete('tuned', 'warm up') IS NOT NULL" >/dev/null

pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
mapped() { awk -v f=".prepared" '$0 ~ /^[0-9a-f]+-/ {on = index($0, f) > 0} on && /^Pss:/ {s += $2} END {print s + 0}' "/proc/$1/smaps"; }

# mode (shared|private), sessions: runs them at once, measures, ends them. Prints a JSON line.
run() {
  local mode=$1 n=$2 share=on
  [ "$mode" = private ] && share=off
  psql_in -c "DELETE FROM done"
  for i in $(seq 0 $((n - 1))); do
    psql_in >"$OUT/$mode-$n-$i.log" 2>&1 <<SQL &
SET application_name = 'bench-memory';
SET distill.share_weights = $share;
SET distill.threads = 1;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT count(distill.complete('tuned', request)) AS rows FROM
  (SELECT request FROM tickets ORDER BY md5(id || '$i') LIMIT $ROWS) r \gset
INSERT INTO done VALUES ('$mode', $i, :t0, extract(epoch FROM clock_timestamp()), pg_backend_pid(), :rows);
SELECT pg_sleep(600);
SQL
  done
  for _ in $(seq 1200); do
    [ "$(psql_in -c "SELECT count(*) FROM done")" = "$n" ] && break
    sleep 0.5
  done
  [ "$(psql_in -c "SELECT count(*) FROM done")" = "$n" ] || { echo "$mode: sessions did not finish" >&2; exit 1; }
  local total=0 file=0 p
  for p in $(psql_in -c "SELECT pid FROM done"); do
    total=$((total + $(pss "$p"))) file=$((file + $(mapped "$p")))
  done
  local stats
  stats=$(psql_in -c "SELECT json_build_object('rows', sum(rows), 'seconds', max(t1) - min(t0)) FROM done")
  psql_in -c "SELECT count(pg_terminate_backend(pid)) FROM done" >/dev/null
  wait || true
  echo "{\"mode\": \"$mode\", \"sessions\": $n, \"pss_kb\": $total, \"prepared_file_pss_kb\": $file, \"run\": $stats}" |
    tee "$OUT/$mode-$n.json" >&2
}

run private 1
run shared 1
run private "$SESSIONS"
run shared "$SESSIONS"

python3 - "$OUT" "$SESSIONS" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
r = {f"{m}_{k}": json.load(open(f"{out}/{m}-{k}.json")) for m in ("private", "shared") for k in (1, n)}
for v in r.values():
    v["rows_per_s"] = v["run"]["rows"] / v["run"]["seconds"]
    v["pss_mb"] = v["pss_kb"] / 1024
one = r["private_1"]["pss_mb"]
res = {
    "sessions": n, "runs": r,
    "ratio_shared_n_vs_one_private": r[f"shared_{n}"]["pss_mb"] / one,
    "ratio_private_n_vs_one_private": r[f"private_{n}"]["pss_mb"] / one,
    "ratio_shared_n_vs_one_shared": r[f"shared_{n}"]["pss_mb"] / r["shared_1"]["pss_mb"],
    "memory_saved_n": 1 - r[f"shared_{n}"]["pss_mb"] / r[f"private_{n}"]["pss_mb"],
    "rows_per_s_shared_vs_private": r[f"shared_{n}"]["rows_per_s"] / r[f"private_{n}"]["rows_per_s"],
    "per_session_private_mb": (r[f"shared_{n}"]["pss_kb"] - r[f"shared_{n}"]["prepared_file_pss_kb"]) / 1024 / n,
}
json.dump(res, open(f"{out}/memory.json", "w"), indent=1)
s, p = r[f"shared_{n}"], r[f"private_{n}"]
print(f"{n} sessions sharing the weights vs one session with its own copy (target <= 1.5x): "
      f"{res['ratio_shared_n_vs_one_private']:.2f}x ({s['pss_mb']:.0f} MB vs {one:.0f} MB PSS)")
print(f"{n} sessions with their own copies vs one: {res['ratio_private_n_vs_one_private']:.2f}x ({p['pss_mb']:.0f} MB); "
      f"sharing saves {100 * res['memory_saved_n']:.0f}%")
print(f"{n} sessions sharing vs one session sharing: {res['ratio_shared_n_vs_one_shared']:.2f}x "
      f"({r['shared_1']['pss_mb']:.0f} MB alone; the prepared file counts {s['prepared_file_pss_kb'] / 1024:.0f} MB across all "
      f"{n}, the rest is {res['per_session_private_mb']:.1f} MB per session)")
print(f"rows/s, {n} sessions, shared vs own copies: {res['rows_per_s_shared_vs_private']:.2f}x "
      f"({s['rows_per_s']:.2f} vs {p['rows_per_s']:.2f}; one session: {r['shared_1']['rows_per_s']:.2f} vs {r['private_1']['rows_per_s']:.2f})")
PY
