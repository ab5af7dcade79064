#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: install everything, build and install pg_distill,
# start a local cluster (as postgres, pg_distill preloaded), load the support tickets, fine-tune the
# default model on the training tickets and classify the held-out ones with it, in psql. The cluster
# keeps running afterwards; the script prints how to connect.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== building and installing pg_distill"
bash scripts/install_extension.sh >/dev/null
dir=/var/tmp/pg_distill-demo port=5433
bash scripts/cluster.sh stop "$dir" 2>/dev/null || true
bash scripts/cluster.sh start "$dir" $port distill_demo
install -d -o postgres -g postgres /var/tmp/pg_distill-demo-data
cp data/support_tickets/*.csv /var/tmp/pg_distill-demo-data/
psql_pg() { sudo -u postgres DISTILL_DATA=/var/tmp/pg_distill-demo-data psql -X -h "$dir" -p $port "$@"; }
# A fresh demo database each run, so it always has this build's extension objects.
psql_pg -d postgres -qc "DROP DATABASE IF EXISTS distill_demo WITH (FORCE)" -c "CREATE DATABASE distill_demo"
psql_pg -d distill_demo -f examples/tickets.sql
echo
echo "The cluster is running. Connect with: sudo -u postgres psql -h $dir -p $port distill_demo"
echo "Stop it with: bash scripts/cluster.sh stop $dir"
