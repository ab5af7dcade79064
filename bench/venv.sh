#!/usr/bin/env bash
# Creates bench/.venv with exactly the packages pinned in bench/requirements.txt (torch + PEFT peer
# of the training benchmark). Idempotent: does nothing when the venv already holds those pins.
#   bash bench/venv.sh            # then: bench/.venv/bin/python bench/peft_train.py ...
# Needs python3 (3.11 tested) with venv, and PyPI. ~2.2 GB download, ~4 GB on disk (see
# requirements.txt for why the CUDA runtime wheels are needed on a CPU-only machine).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
PY="${PYTHON:-python3}"

want="$(sha256sum "$req" | cut -d' ' -f1)"
smoke='import torch, transformers, peft, gguf, numpy, sklearn; torch.set_num_threads(2); assert torch.get_num_threads() == 2; (torch.ones(4, 4, requires_grad=True) @ torch.ones(4, 4)).sum().backward()'

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$venv/bin/python" -W ignore -c "$smoke" >/dev/null 2>&1; then
    echo "bench/.venv is up to date" >&2
    exit 0
fi

[[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
rm -f "$stamp"
# --no-deps: install exactly the pinned closure. torch's own metadata would also pull triton,
# cuda-bindings and cusolver/nvtx/cccl (~0.5 GB more), none of which a CPU run loads.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$req"
# Anything installed before and no longer pinned would make `pip check`-style drift; report it.
extra="$("$venv/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
    | grep -v -E '^(pip|wheel)==' | sort -f | comm -23 - <(grep -v '^#' "$req" | grep . | sort -f) || true)"
[[ -z "$extra" ]] || echo "note: bench/.venv also holds unpinned packages: $extra" >&2
"$venv/bin/python" -W ignore -c "$smoke"
echo "$want" > "$stamp"
"$venv/bin/python" -W ignore -c 'import torch, transformers, peft; print("bench/.venv ready: torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' >&2
