#!/usr/bin/env bash
# Training benchmark: pg_distill's engine vs torch + PEFT, in one invocation, ratios first.
# LoRA r=8 alpha=16 on banking77_10intent train (982 examples), one epoch, batch 8, AdamW lr 1e-3,
# linear warm-up/decay, clip 1.0, 2 threads each; (a) q,v targets and (b) all seven. Both read the
# same GGUF dequantized to f32 and train on the same token ids (the engine writes them for the peer).
#   bash bench/train_vs_peft.sh            (THREADS, DATA, EPOCHS, ROWS (first N training rows) override)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2} EPOCHS=${EPOCHS:-1} DATA=${DATA:-data/banking77_10intent} ROWS=${ROWS:-982}
bash scripts/setup.sh >/dev/null
bash bench/venv.sh
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
out=$(mktemp -d)
cargo build -q -p distill-engine --example bench_train
engine=target/debug/examples/bench_train
common=(--epochs "$EPOCHS" --threads "$THREADS" --train-rows "$ROWS")
$engine --data "$DATA" --train-rows "$ROWS" --dump-tokens "$out/tokens.json"
for t in q,v all; do
  echo "== targets $t: pg_distill engine" >&2
  $engine --data "$DATA" --targets "$t" "${common[@]}" > "$out/engine-$t.json"
  echo "== targets $t: torch+PEFT" >&2
  OMP_NUM_THREADS=$THREADS bench/.venv/bin/python bench/peft_train.py --gguf "$model" --tokens "$out/tokens.json" \
    --targets "$t" --epochs "$EPOCHS" --batch-size 8 --lr 1e-3 --r 8 --alpha 16 --warmup-ratio 0.1 \
    --max-grad-norm 1.0 --seed 42 --threads "$THREADS" > "$out/peft-$t.json"
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print("LoRA training, r=8 alpha=16, batch 8, AdamW lr 1e-3, 2 threads; same token ids for both")
print(f"{'targets':<8} {'tok/s ratio':>11} {'RSS ratio':>9} | {'engine tok/s':>12} {'peft tok/s':>10} | {'engine RSS':>10} {'peft RSS':>9} | {'engine eval':>11} {'peft eval':>9} | {'engine s':>8} {'peft s':>7}")
for t in ["q,v", "all"]:
    e = json.load(open(f"{out}/engine-{t}.json")); p = json.load(open(f"{out}/peft-{t}.json"))
    print(f"{t:<8} {e['real_tokens_per_s']/p['real_tokens_per_s']:>10.2f}x {e['peak_rss_mib']/p['peak_rss_mib']:>8.2f}x | "
          f"{e['real_tokens_per_s']:>12.0f} {p['real_tokens_per_s']:>10.0f} | {e['peak_rss_mib']:>8.0f}Mi {p['peak_rss_mib']:>7.0f}Mi | "
          f"{e['eval_loss']:>11.4f} {p['eval_loss']:>9.4f} | {e['wall_s']:>8.1f} {p['wall_s']:>7.1f}")
print(f"(real tokens: engine {e['real_tokens']}, peft {p['real_tokens']} real / {p['padded_tokens']} padded)")
PY
