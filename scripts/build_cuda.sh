#!/usr/bin/env bash
# The CUDA build, on a machine without a GPU or a CUDA toolkit: the compiler (nvcc 13.0, its NVVM),
# headers and CCCL come from NVIDIA's PyPI wheels, pinned to CUDA 13.0 (the device machine's driver
# supports 13.0; PTX from a newer nvcc would not load there), unpacked once into
# ~/.cache/pg_distill/cuda-13.0 (sha256 of each wheel checked by pip's --require-hashes).
#   bash scripts/build_cuda.sh            cargo check of the engine, its tests and the extension with
#                                         --features cuda (what CI runs: it compiles every CUDA-gated
#                                         line and candle's kernels, and links nothing)
#   bash scripts/build_cuda.sh env        prints the environment (PATH, CUDA_ROOT, CUDA_COMPUTE_CAP) to eval
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
(source scripts/private_pg.sh && cargo check --workspace --all-targets --features pg15,cuda)
