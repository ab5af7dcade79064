#!/usr/bin/env bash
# Creates bench/.venv-llama with the packages pinned in bench/requirements-llama.txt: the llama.cpp
# peer (llama-cpp-python) of the classification benchmark and its runtime deps (the build-only
# pins there are scripts/llama_cpp_wheel.sh's). Kept apart from bench/.venv (torch/PEFT) so neither
# pins the other. Idempotent: does nothing when the venv already holds those pins and imports.
#   bash bench/venv_llama.sh      # then: bench/.venv-llama/bin/python bench/llamacpp_classify.py ...
# Needs python3 (3.11 tested) with venv, and PyPI. llama-cpp-python has no wheel on PyPI: it is
# installed from the wheel that scripts/llama_cpp_wheel.sh compiles from the sdist once per machine
# and caches (~77 MB download and a few minutes of compiling on 2 cores the first time, see the
# report of the build time in bench/README.md; the same wheel serves tests/endpoint/.venv).
# The build flags (CPU only, GGML_NATIVE=ON, AMX off, no llava) and why are in that script; because
# of -march=native the built library belongs to this CPU, and the cache key includes the CPU flags.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="$here/.venv-llama"
req="$here/requirements-llama.txt"
stamp="$venv/.requirements.sha256"
PY="${PYTHON:-python3}"

# The stamp covers the pins and the wheel's cache key (its pins, the build flags, the CPU).
wheel_key="$(bash "$repo/scripts/llama_cpp_wheel.sh" --key)"
want="$( (cat "$req"; echo "$wheel_key") | sha256sum | cut -d' ' -f1)"
smoke='import llama_cpp, jinja2, numpy; assert llama_cpp.__version__ == "0.3.36", llama_cpp.__version__; info = llama_cpp.llama_print_system_info().decode(); assert "AMX_INT8 = 1" not in info, info; print(info)'

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$venv/bin/python" -c "$smoke" >/dev/null 2>&1; then
    echo "bench/.venv-llama is up to date" >&2
    exit 0
fi

# The cached wheel (built here the first time on this machine).
whl="$(bash "$repo/scripts/llama_cpp_wheel.sh")"
[[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
rm -f "$stamp"
pipi() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$@"; }
# 1. llama-cpp-python's runtime deps (not it, nor the build tools: the wheel is built already).
pipi -r <(grep -v -E '^[[:space:]]*(#|$)' "$req" \
    | grep -v -i -E '^(llama-cpp-python|scikit-build-core|pathspec|packaging|cmake|ninja)==')
# 2. llama-cpp-python itself, from the wheel.
pipi --force-reinstall "$whl" >&2
"$venv/bin/python" -c "$smoke" >&2
echo "$want" > "$stamp"
echo "bench/.venv-llama ready" >&2
