#!/usr/bin/env bash
# Profiles of the two hot paths, saved as text beside the results: perf samples (2 threads, call
# graphs off: self time per symbol) of (1) LoRA training, all seven targets, the first PROFILE_ROWS (48)
# banking77_10intent rows, and (2) greedy classification of PROFILE_PROMPTS (60) benchmark ticket prompts
# with the file's weights (Q4_1, C's default). Needs perf (linux-perf); the engine examples are built by cargo.
#   bash bench/profile.sh OUT_DIR     -> OUT_DIR/profile-train.txt, OUT_DIR/profile-classify.txt
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/profile.sh OUT_DIR} rows=${PROFILE_ROWS:-48} prompts=${PROFILE_PROMPTS:-60}
mkdir -p "$out"
command -v perf >/dev/null || { echo "perf not installed (apt-get install linux-perf): no profiles" >&2; exit 1; }
cargo build -q -p distill-engine --example bench_train --example classify_rows
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
report() { # perf.data, title, file
  { echo "# $2"; echo "# perf record -F 499; perf report --no-children --sort dso,symbol (self time, top entries)"
    perf report -i "$1" --no-children --sort dso,symbol --percent-limit 0.5 --stdio 2>/dev/null | grep -v '^$' | sed -n 1,60p
  } >"$3"
}
perf record -q -F 499 -o "$tmp/train.data" -- target/debug/examples/bench_train --data data/banking77_10intent \
  --targets all --train-rows "$rows" --eval-rows 8 --threads 2 >"$tmp/train.json" 2>/dev/null
report "$tmp/train.data" "LoRA training, all seven targets, $rows rows, batch 8: $(cat "$tmp/train.json")" "$out/profile-train.txt"
python3 bench/make_ticket_rows.py "$prompts" "$tmp" >/dev/null
perf record -q -F 499 -o "$tmp/classify.data" -- target/debug/examples/classify_rows --prompts "$tmp/prompts.json" \
  --format file --threads 2 --out "$tmp/classify.json" >"$tmp/classify.log" 2>&1
summary=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); d.pop("outputs"); print(json.dumps(d))' "$tmp/classify.json")
report "$tmp/classify.data" "classification, $prompts ticket prompts, file weights, max 12 tokens: $summary" "$out/profile-classify.txt"
echo "profiles in $out" >&2
