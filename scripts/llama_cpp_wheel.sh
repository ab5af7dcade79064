#!/usr/bin/env bash
# Builds, once per machine, a wheel of llama-cpp-python (the pin in bench/requirements-llama.txt)
# from its sdist, and prints the wheel's absolute path on stdout (everything else goes to stderr).
#   whl="$(bash scripts/llama_cpp_wheel.sh)"     # then: pip install --no-deps "$whl"
#   bash scripts/llama_cpp_wheel.sh --key        # only the cache key (no build, no network)
# Used by bench/venv_llama.sh and tests/endpoint/venv.sh, so llama.cpp is compiled at most once
# for both. llama-cpp-python has no wheel on PyPI: the sdist (~77 MB) is compiled with CMake,
# a few minutes on 2 idle cores (~8.5 CPU-minutes). Needs python3 (3.11 tested) with venv, gcc/g++,
# PyPI, flock.
#
# Cache: ${PG_DISTILL_CACHE:-$HOME/.cache/pg_distill}/wheels/<key>/llama_cpp_python-*.whl, where
# key = sha256 of the pins (llama-cpp-python and its build tools), the CMake arguments, and this
# CPU's /proc/cpuinfo flags line: GGML_NATIVE=ON means -march=native, so the binary belongs to the
# CPU that built it, and another CPU gets its own build (the wheel is py3-none-linux_x86_64: any
# python 3 takes it). CI (a fresh clone each run on the same machine) therefore builds it only the
# first time. The build goes into a temporary folder beside the cache entry and is moved into place
# when complete; a lock serialises concurrent callers, so a half-built or interrupted build is never
# taken for a wheel.
#
# Build flags (CMAKE_ARGS, overridable by the environment; the override is part of the key): CPU
# backend only, GGML_NATIVE=ON (llama.cpp's default: -march=native, so the library uses the build
# machine's SIMD: AVX2, AVX-512 (VBMI/VNNI/BF16), AVX-VNNI, FMA, F16C on the Xeons here), OpenMP on
# (default), no mtmd/llava library (multimodal; not needed, and llama_cpp imports it lazily), none of
# llama.cpp's own server/tests/examples/tools. AMX is switched off (-mno-amx-*; GCC lets explicit
# -mno-* win over -march=native): these Xeons report amx_tile/amx_int8 and a plain AMX test program
# runs, but ggml's AMX matmul (used for Q4_1 weights) dies with SIGILL on its first tileloadd here.
# Build isolation is off, so the build tools are the pinned ones (installed into a throw-away build
# venv), not whatever PyPI serves that day.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
req="$repo/bench/requirements-llama.txt"
PY="${PYTHON:-python3}"
cache="${PG_DISTILL_CACHE:-$HOME/.cache/pg_distill}/wheels"

no_amx='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
cmake_args="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'}"

# The pins: llama-cpp-python and its build tools (bench/venv_llama.sh leaves these tools out of
# bench/.venv-llama). Names as written in bench/requirements-llama.txt, compared case-insensitively.
build_tools='scikit-build-core|pathspec|packaging|cmake|ninja'
pins="$(grep -i -E "^(llama-cpp-python|$build_tools)==" "$req" | tr '[:upper:]' '[:lower:]' | sort)"
llama_pin="$(grep -i '^llama-cpp-python==' "$req")"
[[ "$(grep -c . <<<"$pins")" == 6 ]] || { echo "llama_cpp_wheel.sh: expected 6 pins in $req, got: $pins" >&2; exit 1; }
cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo || true)"
key="$(printf '%s\n--\n%s\n--\n%s\n' "$pins" "$cmake_args" "$cpu_flags" | sha256sum | cut -d' ' -f1)"

if [[ "${1:-}" == "--key" ]]; then
    echo "$key"
    exit 0
fi

dest="$cache/$key"
found() { compgen -G "$dest/llama_cpp_python-*.whl" | head -n1; }
if whl="$(found)" && [[ -n "$whl" ]]; then
    echo "$whl"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9                       # another caller may be building it right now: wait for it
if whl="$(found)" && [[ -n "$whl" ]]; then
    echo "$whl"
    exit 0
fi

tmp="$(mktemp -d "$cache/.tmp.$key.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "building $llama_pin into $dest (once per machine: a few minutes)" >&2
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r <(grep -i -E "^($build_tools)==" "$req") >&2
start=$(date +%s)
CMAKE_ARGS="$cmake_args" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$tmp/venv/bin/python" -m pip wheel --disable-pip-version-check --no-deps --no-build-isolation \
        --no-binary llama-cpp-python --no-cache-dir --wheel-dir "$tmp/wheel" "$llama_pin" >&2
echo "llama-cpp-python wheel built in $(( $(date +%s) - start ))s" >&2
n="$(compgen -G "$tmp/wheel/llama_cpp_python-*.whl" | wc -l)"
[[ "$n" == 1 ]] || { echo "llama_cpp_wheel.sh: expected one wheel in $tmp/wheel, found $n" >&2; exit 1; }
rm -rf "$dest"
mv "$tmp/wheel" "$dest"
whl="$(found)"
echo "$whl"
