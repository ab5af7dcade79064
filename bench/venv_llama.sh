#!/usr/bin/env bash
# Creates bench/.venv-llama with exactly the packages pinned in bench/requirements-llama.txt: the
# llama.cpp peer (llama-cpp-python) of the classification benchmark. Kept apart from bench/.venv
# (torch/PEFT) so neither pins the other. Idempotent: does nothing when the venv already holds
# those pins and imports.
#   bash bench/venv_llama.sh      # then: bench/.venv-llama/bin/python bench/llamacpp_classify.py ...
# Needs python3 (3.11 tested) with venv, a C/C++ compiler (gcc/g++), and PyPI. llama-cpp-python
# has no wheel on PyPI, so this compiles llama.cpp from the sdist: ~77 MB download, and a few
# minutes of compiling on 2 cores (see the report of the build time in bench/README.md).
#
# Build flags (CMAKE_ARGS): CPU backend only, GGML_NATIVE=ON (llama.cpp's default: -march=native,
# so the library uses the build machine's SIMD: AVX2, AVX-512 (VBMI/VNNI/BF16), AVX-VNNI, FMA, F16C
# on the Xeons here), OpenMP on (default), no mtmd/llava library (multimodal; not needed, and
# llama_cpp imports it lazily). AMX is switched off (-mno-amx-*; GCC lets explicit -mno-* win over
# -march=native): these Xeons report amx_tile/amx_int8 and a plain AMX test program runs, but
# ggml's AMX matmul (used for Q4_1 weights) dies with SIGILL on its first tileloadd here.
# Because of -march=native the built library belongs to this CPU: rebuild on another machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-llama"
req="$here/requirements-llama.txt"
stamp="$venv/.requirements.sha256"
PY="${PYTHON:-python3}"

no_amx='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
cmake_args="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'}"
# The stamp covers the pins and the build flags.
want="$( (cat "$req"; echo "$cmake_args") | sha256sum | cut -d' ' -f1)"
smoke='import llama_cpp, jinja2, numpy; assert llama_cpp.__version__ == "0.3.36", llama_cpp.__version__; info = llama_cpp.llama_print_system_info().decode(); assert "AMX_INT8 = 1" not in info, info; print(info)'

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$venv/bin/python" -c "$smoke" >/dev/null 2>&1; then
    echo "bench/.venv-llama is up to date" >&2
    exit 0
fi

[[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
rm -f "$stamp"
pipi() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$@"; }
# 1. everything but llama-cpp-python: its runtime deps and the pinned build tools.
pipi -r <(grep -v -E '^[[:space:]]*(#|$)' "$req" | grep -v -i '^llama-cpp-python==')
# 2. llama-cpp-python itself, built from the sdist with the tools above (no build isolation).
llama_pin="$(grep -i '^llama-cpp-python==' "$req")"
start=$(date +%s)
CMAKE_ARGS="$cmake_args" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-deps --no-build-isolation \
        --no-binary llama-cpp-python --no-cache-dir --force-reinstall "$llama_pin" >&2
echo "llama-cpp-python built and installed in $(( $(date +%s) - start ))s" >&2
"$venv/bin/python" -c "$smoke" >&2
echo "$want" > "$stamp"
echo "bench/.venv-llama ready" >&2
