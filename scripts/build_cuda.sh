#!/usr/bin/env bash
# The CUDA build, on a machine without a GPU or a CUDA toolkit: the compiler (nvcc 13.0, its NVVM),
# headers and CCCL come from NVIDIA's PyPI wheels, pinned to CUDA 13.0 (the device machine's driver
# supports 13.0; PTX from a newer nvcc would not load there), unpacked once into
# ~/.cache/pg_distill/cuda-13.0 (sha256 of each wheel checked by pip's --require-hashes).
#   bash scripts/build_cuda.sh            what CI runs: clippy over the workspace with --features cuda
#                                         (every CUDA-gated line of the extension and engine), then builds
#                                         the engine's tests with it, linked against stand-ins for the CUDA
#                                         libraries (scripts/cuda_link_stubs.py: this machine has none;
#                                         they go into the cache's lib/, beside the runtime), and
#                                         runs the engine's device tests here: with no driver,
#                                         `auto` falls back to the CPU (the device path's tests pass on
#                                         it) and `cuda` is refused, saying why
#   bash scripts/build_cuda.sh env        prints the environment (PATH, CUDA_ROOT, CUDA_COMPUTE_CAP) to eval
#   bash scripts/build_cuda.sh device     the above, then prepares .device/ for a lent GPU machine: the
#                                         device_path test, bench_train and classify_rows binaries
#                                         (stripped, xz), the model in two parts, the benchmark's token ids
#                                         and initial adapter, the gguf wheel hf_from_gguf.py reads with,
#                                         in three loads of at most 60 MB (what travels is limited to
#                                         64 MiB a call); then three `run` calls back to back, each
#                                         carrying the next: [".device/1"] "true", [".device/2"] "true",
#                                         [".device/3"] "bash scripts/device_check.sh"
# CUDA_COMPUTE_CAP (default 90: the H200) picks the architecture candle's kernels compile for.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${PG_DISTILL_CUDA:-$HOME/.cache/pg_distill/cuda-13.0}
cuda=$root/nvidia/cu13
if [ ! -x "$cuda/bin/nvcc" ] || [ ! -x "$cuda/nvvm/bin/cicc" ]; then
  echo "== build_cuda: fetching CUDA 13.0's compiler and headers from PyPI into $root" >&2
  tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
  cat >"$tmp/requirements.txt" <<'REQ'
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
REQ
  python3 -m pip download -q --no-deps --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheels"
  rm -rf "$root.part" && mkdir -p "$root.part"
  for w in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$w" "$root.part"; done
  chmod +x "$root.part"/nvidia/cu13/bin/* "$root.part"/nvidia/cu13/nvvm/bin/*
  rm -rf "$root" && mv "$root.part" "$root"
fi
export PATH=$cuda/bin:$PATH CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_HOME=$cuda
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
if [ "${1:-}" = env ]; then
  echo "export PATH=$cuda/bin:\$PATH CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_HOME=$cuda CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
  exit 0
fi
nvcc --version | tail -2 >&2

# The stand-ins go beside the runtime library, in the folder cudarc's build script always puts on the
# link path (lib/stubs, a toolkit's own place for them, is added only if it existed when that script
# first ran).
stubs=$cuda/lib
build=(cargo build -p distill-engine --features cuda --lib --tests --example bench_train --example classify_rows)
(source scripts/private_pg.sh && cargo clippy --workspace --all-targets --features pg15,cuda -- -D warnings)
# The stand-ins come from the symbols cudarc's library calls, read from its rlib: a first build makes
# it (the same build as below, so that candle is not built twice with two sets of features; it fails to
# link where the stand-ins are still missing). Made every time, not only when the toolkit cache lacks
# them: a cache can outlive target/ (CI's did, and the rlib was missing), and a new cudarc may call more.
"${build[@]}" -q 2>/dev/null || true
python3 scripts/cuda_link_stubs.py "$stubs" target/debug/deps/libcudarc-*.rlib
# candle's MoE kernels link the CUDA runtime, which the runtime wheel has (only versioned).
ln -sf libcudart.so.13 "$stubs/libcudart.so"
"${build[@]}"
bins=$("${build[@]}" --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])')
bin() { awk -v n="$1" '$1 == n {print $2}' <<<"$bins" | head -1; }
echo "== the CUDA build here, with no driver: auto is the CPU, cuda is refused with the reason" >&2
export LD_LIBRARY_PATH=$stubs DISTILL_MODEL_DIR=${DISTILL_MODEL_DIR:-$PWD/models}
"$(bin distill_engine)" device::
"$(bin device_path)" --test-threads 1
if DISTILL_TEST_DEVICE=cuda "$(bin device_path)" inference_in_f32 >/tmp/pg_distill-cuda-refused.log 2>&1; then
  echo "DISTILL_TEST_DEVICE=cuda ran without a GPU" >&2; exit 1
fi
grep -q "no usable CUDA device 0" /tmp/pg_distill-cuda-refused.log || { cat /tmp/pg_distill-cuda-refused.log >&2; exit 1; }
[ "${1:-}" = device ] || exit 0

echo "== .device/ for a lent GPU machine" >&2
# What travels to the device machine is limited to 64 MiB a call, the working tree included: three
# loads of at most ~60 MB, .device/1 to .device/3, one `run` call each, back to back (a machine stays
# warm 30 s after a call; files outside the repository stay with it); the third call runs the check.
d=.device
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >>.git/info/exclude
rm -rf "$d" && mkdir -p "$d/1" "$d/2/wheels" "$d/3/bin"
# The CUDA binaries first: the CPU build of bench_train below takes its place in target/debug/examples.
for b in device_path bench_train classify_rows; do
  strip -o "$d/3/bin/$b" "$(bin $b)" && xz -T2 -6 "$d/3/bin/$b"
done
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
first=60000000
head -c "$first" "$model" >"$d/1/model.part1" && tail -c +$((first + 1)) "$model" >"$d/2/model.part2"
(cd models && sha256sum "$(basename "$model")") >"$d/2/model.sha256"
# The benchmark's token ids, example order and initial adapter, made by the CPU build (as
# bench/train_vs_peft.sh does), so both sides train on the same.
(
  unset LD_LIBRARY_PATH
  cargo build -q -p distill-engine --example bench_train
  target/debug/examples/bench_train --data data/banking77_10intent --epochs 1 --dump-tokens "$d/2/tokens.json"
  target/debug/examples/bench_train --data data/banking77_10intent --targets all --dump-init "$d/2/init-all"
)
python3 -m pip download -q --no-deps --only-binary=:all: -d "$d/2/wheels" gguf==0.19.0
du -sh "$d"/* >&2
for load in 1 2 3; do
  [ "$(du -sb "$d/$load" | cut -f1)" -lt 61000000 ] || { echo "$d/$load is over 61 MB" >&2; exit 1; }
done
# A call drops what the previous call carried inside the repository: each load is copied out to /tmp.
echo "then, back to back: run carry [\".device/1\"] \"mkdir -p /tmp/dev && cp -r .device/1 /tmp/dev/\";" \
  "run carry [\".device/2\"] \"cp -r .device/2 /tmp/dev/\";" \
  "run carry [\".device/3\"] \"cp -r .device/3 /tmp/dev/ && rm -rf .device && ln -s /tmp/dev .device && bash scripts/device_check.sh\"" >&2
