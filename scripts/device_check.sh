#!/usr/bin/env bash
# Issue 25's proof on a lent GPU machine (the `device` tool): run there, from the repository's root,
# over what `bash scripts/build_cuda.sh device` prepared in .device/1 to .device/3 (carried by three
# calls, each copying its load to /tmp/dev, the last linking .device there and running this: what
# travels is limited to 64 MiB a call, and a call drops what the last one carried). Writes every
# log and JSON result under $OUT, prints ratios first:
#   1. the engine's device tests on the GPU (engine/tests/device_path.rs with DISTILL_TEST_DEVICE=cuda:0:
#      logits, LoRA gradients, a short training run's losses and PEFT export against the CPU path);
#   2. one epoch of banking77_10intent (982 examples, LoRA r=8 on all seven targets, batch 8 and 32),
#      the engine on CUDA vs torch + PEFT on the same GPU (the image's PyTorch), same token ids, order
#      and initial adapter, frozen base in bf16 on both;
#   3. phase C's 1,000 ticket rows, greedy, at most 12 new tokens, one row after another, on CUDA;
#      then the same rows decoded CHECK_BATCHES (default "32 128") at a time, as complete_rows does.
#   bash scripts/device_check.sh   (OUT: where results go; default /tmp/device-check)
# CHECK_PHASES (default "tests train rows batched") runs some of them: a second call on a fresh
# machine needs only the model's parts and the binaries its phases run.
# A rehearsal here, without a GPU (every step but CUDA itself: the model's parts, the binaries, the
# libraries' lookup, the wheel, both trainers, the rows, the summary), after `build_cuda.sh device`:
#   LD_LIBRARY_PATH=<toolkit cache>/nvidia/cu13/lib CHECK_DEVICE=cpu PYTHON=bench/.venv/bin/python \
#     CHECK_TRAIN_ROWS=64 CHECK_ROWS=50 bash scripts/device_check.sh
# (a rehearsal's eval losses do not compare: the engine's schedule spans its N rows, the peer's the
# whole epoch cut at the same step).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/device-check} && mkdir -p "$out"
d=.device
dev=${CHECK_DEVICE:-cuda}          # cpu: the rehearsal (tests on the CPU's device path, f32 peer)
py=${PYTHON:-python3}              # the interpreter with torch and PEFT (the image's own)
dtype=bf16 && [ "$dev" = cpu ] && dtype=f32
test_device=$dev && [ "$dev" = cuda ] && test_device=cuda:0
rows=${CHECK_ROWS:-1000}           # phase C's rows; the rehearsal takes fewer, and
train_rows=${CHECK_TRAIN_ROWS:-}   # the first N training rows (both trainers stop at the same step)
phases=" ${CHECK_PHASES:-tests train rows batched} "
exec > >(tee "$out/check.log") 2>&1
nvidia-smi -L || true

# The model, from its parts.
mkdir -p models
cat "$d"/1/model.part1 "$d"/2/model.part2 > models/SmolLM2-135M-Instruct.Q4_1.gguf
(cd models && sha256sum -c "../$d/2/model.sha256") || { echo "model parts missing or damaged"; exit 1; }
# The binaries and the PyTorch image's CUDA libraries (cuBLAS, cuRAND, NVRTC from its nvidia-* wheels;
# the driver's libcuda from its own folder).
mkdir -p /tmp/bin
for x in "$d"/3/bin/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$x" "/tmp/bin/$(basename "$x" .xz)"; done
chmod +x /tmp/bin/*
libs=$("$py" - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for f in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH=$libs:/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
# Any library still not found (a toolkit outside the wheels): look for it once under the usual roots.
for lib in $(ldd /tmp/bin/* | awk '/not found/ {print $1}' | sort -u); do
  found=$(find /usr /opt /lib /usr/local -name "$lib" 2>/dev/null | head -1)
  [ -n "$found" ] && export LD_LIBRARY_PATH=$(dirname "$found"):$LD_LIBRARY_PATH
done
ldd "$(ls /tmp/bin/* | head -1)" | grep -E "cuda|cublas|curand|nvrtc"
export DISTILL_REPO_ROOT=$PWD DISTILL_MODEL_DIR=$PWD/models DISTILL_TEST_DEVICE=$test_device
[[ $phases == *" train "* ]] && "$py" -m pip install -q --no-index --no-deps --target /tmp/site "$d"/2/wheels/*.whl &&
  export PYTHONPATH=/tmp/site

tests=skipped
if [[ $phases == *" tests "* ]]; then
echo "== 1. device tests ($test_device against the CPU path)"
/tmp/bin/device_path --test-threads 1 --nocapture
tests=$?
fi

[[ $phases == *" train "* ]] && echo "== 2. training: one epoch of banking77_10intent, engine vs torch + PEFT, both on $dev"
for batch in 8 32; do
  [[ $phases == *" train "* ]] || break
  limit=() && peft_limit=()
  [ -n "$train_rows" ] && limit=(--train-rows "$train_rows") && peft_limit=(--max-steps $(((train_rows + batch - 1) / batch)))
  /tmp/bin/bench_train "${limit[@]}" --data data/banking77_10intent --targets all --epochs 1 --batch "$batch" --device "$dev" \
    --model-dir models >"$out/engine-b$batch.json"
  "$py" bench/peft_train.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf --tokens "$d/2/tokens.json" \
    --targets all --epochs 1 --batch-size "$batch" --lr 1e-3 --r 8 --alpha 16 --warmup-ratio 0.1 --max-grad-norm 1.0 \
    --seed 42 --order engine --init-adapter "$d/2/init-all" --device "$dev" --dtype "$dtype" "${peft_limit[@]}" >"$out/peft-b$batch.json"
done

python3 bench/make_ticket_rows.py "$rows" /tmp/rows >/dev/null
if [[ $phases == *" rows "* ]]; then
  echo "== 3. $rows ticket rows on $dev, one after another"
  /tmp/bin/classify_rows --prompts /tmp/rows/prompts.json --device "$dev" --model-dir models --out "$out/rows.json"
fi
if [[ $phases == *" batched "* ]]; then
  for b in ${CHECK_BATCHES:-32 128}; do
    echo "== 3. $rows ticket rows on $dev, $b at a time"
    /tmp/bin/classify_rows --prompts /tmp/rows/prompts.json --device "$dev" --model-dir models --batch "$b" --out "$out/rows-b$b.json"
  done
fi

echo "== results (device tests exit: $tests)"
# The same tables BENCHMARKS.md's phase G prints from these files.
python3 bench/report.py gpu "$out"
