#!/usr/bin/env bash
# pg_regress over tests/sql/*.sql against tests/expected/*.out, on a fresh cluster with pg_distill
# preloaded, in the order of tests/schedule. Needs the extension installed (cargo pgrx install).
# Usage: tests/regress.sh [test ...]   (named tests only, in the order given)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PGBIN=/usr/lib/postgresql/15/bin
REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
work=/tmp/pg_distill-regress
port=55432
bash scripts/cluster.sh stop "$work/data" 2>/dev/null || true
rm -rf "$work" && install -d -o postgres -g postgres "$work"
# pg_regress runs as postgres: give it copies it can read and a place to write.
cp -r tests/sql tests/expected tests/schedule "$work/" && mkdir -p "$work/data-files" && cp data/support_tickets/*.csv "$work/data-files/"
# Broken model files for bad_input.sql: random bytes, a GGUF cut short, an empty file.
mkdir -p "$work/data-files/badmodels"
head -c 65536 /dev/zero | tr "\\0" x >"$work/data-files/badmodels/garbage.gguf"
head -c 3000000 models/SmolLM2-135M-Instruct.Q4_1.gguf >"$work/data-files/badmodels/truncated.gguf"
: >"$work/data-files/badmodels/empty.gguf"
# Adapter zips for adapters.sql (PEFT's folder layout, a config without weights, another base's, DoRA, bad JSON).
python3 tests/make_adapter_zips.py "$work/data-files/adapters"
# A "full disk" for downloads: the write probe in this model dir lands on /dev/full (ENOSPC).
mkdir -p "$work/data-files/fullmodels/hub" && ln -s /dev/full "$work/data-files/fullmodels/hub/.distill-write-probe"
chown -R postgres:postgres "$work"
# Fine-tuning jobs run in distill.database: the test database itself, made before pg_regress runs
# (--use-existing), since a worker connected to it would stop pg_regress from dropping it.
bash scripts/cluster.sh start "$work/data" $port distill_regress
trap 'bash "$root/scripts/cluster.sh" stop "$work/data"' EXIT
sudo -u postgres psql -X -q -h "$work/data" -p $port -d postgres -c "CREATE DATABASE distill_regress"
for f in tests/sql/*.sql; do
  grep -qx "test: $(basename "$f" .sql)" tests/schedule || { echo "$f is not in tests/schedule" >&2; exit 1; }
done
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(--schedule="$work/schedule")
# The test files include their set-up with \ir fixtures/...: pg_regress feeds them to psql on stdin, so
# \ir resolves against the working directory.
cd "$work/sql"
if ! sudo -u postgres PGDATAFILES="$work/data-files" "$REGRESS" --bindir=$PGBIN --host="$work/data" --port=$port \
     --inputdir="$work" --outputdir="$work" --dbname=distill_regress --use-existing "${tests[@]}"; then
  cat "$work/regression.diffs" >&2 || true
  exit 1
fi
