#!/usr/bin/env bash
# Builds pg_distill and installs it into the system PostgreSQL without disturbing a running server:
# each file is written beside its destination and renamed over it, so a server that has the old
# library mapped keeps running it (sessions and the worker go on as they were); it runs the new one
# after a restart. (Copying over the file in place, as `cargo pgrx install` does, changes the pages a
# running server has mapped and crashes it.) Usage: bash scripts/install_extension.sh
# PG_DISTILL_BUILD=<id> marks the build in distill.version() (tests/upgrade.sh tells builds apart so).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/private_pg.sh
stage=$PWD/target/pg_distill-stage
rm -rf "$stage"
cargo pgrx package --debug --pg-config "$PRIVATE_PG_CONFIG" --out-dir "$stage" >/dev/null
# The package mirrors the private tree's paths; the same paths without the prefix are the system's.
staged=$stage$PRIVATE_PREFIX
[ -d "$staged" ] || { echo "install_extension.sh: nothing staged under $staged" >&2; exit 1; }
(cd "$staged" && find . -type f) | while read -r rel; do
  dest=/${rel#./}
  tmp=$(dirname "$dest")/.$(basename "$dest").new.$$
  install -D -m 644 "$staged/$rel" "$tmp"
  case "$dest" in *.so) chmod 755 "$tmp" ;; esac
  mv -f "$tmp" "$dest"
  echo "installed $dest"
done
