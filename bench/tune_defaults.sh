#!/usr/bin/env bash
# Choosing training defaults on validation data only (issue 27): banking77_10intent's TRAINING split is
# split again, seeded, into 80% for training and 20% for validation; each candidate configuration is
# trained on the 80% and scored on the 20% (exact match, greedy, free and from the label set). The test
# split is not read here: bench/finetune_sql.sh scores the chosen defaults on it once.
#   bash bench/tune_defaults.sh            (THREADS=2, OUT=bench/results/defaults, CONFIGS override)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2} OUT=${OUT:-bench/results/defaults}
mkdir -p "$OUT"
python3 - "$OUT" <<'PY'
import csv, random, sys
rows = list(csv.reader(open('data/banking77_10intent/train.csv')))
head, rows = rows[0], rows[1:]
random.Random(27).shuffle(rows)
cut = len(rows) * 4 // 5
for name, part in (('sweep_train.csv', rows[:cut]), ('sweep_val.csv', rows[cut:])):
    with open(f'{sys.argv[1]}/{name}', 'w', newline='') as f:
        w = csv.writer(f); w.writerow(head); w.writerows(part)
print(f'{cut} training rows, {len(rows) - cut} validation rows', file=sys.stderr)
PY
cargo build -q -p distill-engine --example finetune_eval
# name|flags: the current defaults first, then one change at a time.
CONFIGS=${CONFIGS:-"defaults (lr 1e-3, 3 epochs, r 8, all targets)|
lr 2e-3|--lr 2e-3
lr 5e-4|--lr 5e-4
2 epochs|--epochs 2
4 epochs|--epochs 4
r 16, alpha 32|--r 16 --alpha 32
targets q,v|--targets q,v"}
echo "| configuration | validation accuracy, free | from the label set | train s |" | tee "$OUT/table.md"
echo "|---|---|---|---|" | tee -a "$OUT/table.md"
while IFS='|' read -r name flags; do
  [ -n "$name" ] || continue
  # shellcheck disable=SC2086
  line=$(target/debug/examples/finetune_eval --train "$OUT/sweep_train.csv" --test "$OUT/sweep_val.csv" \
           --threads "$THREADS" $flags 2>"$OUT/$(echo "$name" | tr -c 'a-z0-9' _).log")
  echo "$name: $line" >>"$OUT/raw.txt"
  free=$(sed -E 's/^accuracy ([0-9.]+) \(([0-9/]+)\) free.*/\1 (\2)/' <<<"$line")
  labels=$(sed -E 's/.*free, ([0-9.]+ \([0-9/]+\)) from the label set.*/\1/' <<<"$line")
  secs=$(sed -E 's/.*train ([0-9.]+)s,.*/\1/' <<<"$line")
  echo "| $name | $free | $labels | $secs |" | tee -a "$OUT/table.md"
done <<<"$CONFIGS"
