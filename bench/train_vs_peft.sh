#!/usr/bin/env bash
# Training benchmark: pg_distill's engine vs torch + PEFT, in one invocation, ratios first.
# LoRA r=8 alpha=16 on banking77_10intent train (982 examples), one epoch, batch 8, AdamW lr 1e-3,
# linear warm-up/decay, clip 1.0, 2 threads each; (a) q,v targets and (b) all seven. Both read the
# same GGUF dequantized to f32 and train on the same token ids (the engine writes them for the peer),
# from the same initial adapter and in the same example order (the engine's; SAME_START=0: each side
# draws its own, with the same distributions), so their eval losses differ by numerics, not by luck.
# The engine packs the prompt prefix a batch's examples share once (same loss and gradients, less
# compute); for the targets in UNSHARED_TARGETS it also runs with --no-share-prefix, to show both.
#   bash bench/train_vs_peft.sh   (THREADS, DATA, EPOCHS, ROWS (first N training rows), TARGETS ("q,v all"),
#                                  UNSHARED_TARGETS ("all"), SAME_START (1), OUT (where the JSON results stay) override)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2} EPOCHS=${EPOCHS:-1} DATA=${DATA:-data/banking77_10intent} ROWS=${ROWS:-982}
TARGETS=${TARGETS:-"q,v all"} OUT=${OUT:-$(mktemp -d)} SAME_START=${SAME_START:-1} UNSHARED_TARGETS=${UNSHARED_TARGETS-all}
bash scripts/setup.sh >/dev/null
bash bench/venv.sh
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
out=$OUT && mkdir -p "$out"
cargo build -q -p distill-engine --example bench_train
engine=target/debug/examples/bench_train
common=(--epochs "$EPOCHS" --threads "$THREADS" --train-rows "$ROWS")
$engine --data "$DATA" --train-rows "$ROWS" --epochs "$EPOCHS" --dump-tokens "$out/tokens.json"
for t in $TARGETS; do
  start=()
  if [ "$SAME_START" = 1 ]; then
    $engine --data "$DATA" --targets "$t" --dump-init "$out/init-$t"
    start=(--order engine --init-adapter "$out/init-$t")
  fi
  echo "== targets $t: pg_distill engine" >&2
  $engine --data "$DATA" --targets "$t" "${common[@]}" > "$out/engine-$t.json"
  if [[ " $UNSHARED_TARGETS " == *" $t "* ]]; then
    echo "== targets $t: pg_distill engine, prompt prefix not shared" >&2
    $engine --data "$DATA" --targets "$t" "${common[@]}" --no-share-prefix > "$out/engine-noshare-$t.json"
  fi
  echo "== targets $t: torch+PEFT" >&2
  OMP_NUM_THREADS=$THREADS bench/.venv/bin/python bench/peft_train.py --gguf "$model" --tokens "$out/tokens.json" \
    --targets "$t" --epochs "$EPOCHS" --batch-size 8 --lr 1e-3 --r 8 --alpha 16 --warmup-ratio 0.1 \
    --max-grad-norm 1.0 --seed 42 --threads "$THREADS" "${start[@]}" > "$out/peft-$t.json"
done
echo "LoRA training, r=8 alpha=16, batch 8, AdamW lr 1e-3, $THREADS threads; the same token ids for both"
python3 bench/report.py train "$out"
