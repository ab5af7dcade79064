#!/usr/bin/env bash
# Creates tests/endpoint/.venv: llama-cpp-python's OpenAI-compatible server (llama_cpp.server) and
# exactly the packages pinned in tests/endpoint/requirements.txt (pip --no-deps, no resolver).
# llama-cpp-python itself comes from the wheel that scripts/llama_cpp_wheel.sh builds once per
# machine and caches (the first time: a few minutes of compiling llama.cpp; the same wheel serves
# bench/.venv-llama). Idempotent: does nothing when the venv already holds those pins and that
# wheel, and imports.
#   bash tests/endpoint/venv.sh      # then: bash tests/endpoint/servers.sh start DIR
# Needs python3 (3.11 tested) with venv, and PyPI (plus what scripts/llama_cpp_wheel.sh needs).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
PY="${PYTHON:-python3}"

# The stamp covers the pins and the wheel's cache key (llama-cpp-python's pins, build flags, CPU).
wheel_key="$(bash "$repo/scripts/llama_cpp_wheel.sh" --key)"
want="$( (cat "$req"; echo "$wheel_key") | sha256sum | cut -d' ' -f1)"
smoke='import llama_cpp, llama_cpp.server, uvicorn, fastapi; assert llama_cpp.__version__ == "0.3.36", llama_cpp.__version__; info = llama_cpp.llama_print_system_info().decode(); assert "AMX_INT8 = 1" not in info, info'

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$venv/bin/python" -c "$smoke" >/dev/null 2>&1; then
    echo "tests/endpoint/.venv is up to date" >&2
    exit 0
fi

whl="$(bash "$repo/scripts/llama_cpp_wheel.sh")"
[[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r <(grep -v -E '^[[:space:]]*(#|$)' "$req") >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$whl" >&2
"$venv/bin/python" -c "$smoke" >&2
echo "$want" > "$stamp"
echo "tests/endpoint/.venv ready" >&2
