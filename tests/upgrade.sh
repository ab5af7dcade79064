#!/usr/bin/env bash
# Installing a new build under a running server, as scripts/install_extension.sh does for set-up,
# demo, tests and upgrades: a cluster on the installed extension answers complete() and runs its
# worker; a fresh build (another PG_DISTILL_BUILD) is installed; the running cluster still answers, in
# an open session and a new one, its worker is the same process, its log shows no crashed process and
# its postmaster never restarted; after a restart it runs the new build. (An in-place copy over the
# library crashed such a cluster with signal 11.) Needs the extension installed.
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/pg_distill-upgrade port=55438 db=distill_upgrade
source scripts/fresh_cluster.sh
fail() { echo "FAIL: $*" >&2; tail -20 "$work/data/server.log" >&2; exit 1; }
psql_in -c "CREATE EXTENSION pg_distill"
ask="SELECT distill.complete('smollm2-135m', 'Say yes.', '{\"max_tokens\": 3}')"
worker_pid() { psql_in -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_distill worker'"; }
before=$(psql_in -c "$ask")
# The worker started before the database existed; the postmaster starts it again within 5 s.
for _ in $(seq 30); do pid=$(worker_pid); [ -n "$pid" ] && break; sleep 1; done
[ -n "$pid" ] || fail "the cluster has no pg_distill worker"
started=$(psql_in -c "SELECT pg_postmaster_start_time()")

# A session that stays open across the install (fed through a FIFO).
mkfifo "$work/session.in" && chown postgres "$work/session.in"
sudo -u postgres psql -X -q -At -h "$work/data" -p "$port" -d "$db" <"$work/session.in" >"$work/session.out" 2>&1 &
session=$!
exec 3>"$work/session.in"
echo "$ask;" >&3

build="upgrade-test-$(date +%s)"
PG_DISTILL_BUILD=$build bash scripts/install_extension.sh >/dev/null

echo "$ask;" >&3
echo '\q' >&3
exec 3>&-
wait "$session" || fail "the open session failed: $(cat "$work/session.out")"
[ "$(cat "$work/session.out")" = "$before"$'\n'"$before" ] || fail "the open session answered: $(cat "$work/session.out")"
[ "$(psql_in -c "$ask")" = "$before" ] || fail "a new session answers differently after the install"
[ "$(worker_pid)" = "$pid" ] || fail "the worker changed from pid $pid to '$(worker_pid)'"
[ "$(psql_in -c "SELECT pg_postmaster_start_time()")" = "$started" ] || fail "the postmaster restarted"
if grep -E "terminated by signal|was terminated|server process .* exited abnormally" "$work/data/server.log"; then
  fail "a server process crashed"
fi
echo "install under a running cluster: open and new sessions answer the same, worker $pid alive, no crash"

bash scripts/cluster.sh stop "$work/data"
bash scripts/cluster.sh start "$work/data" "$port" "$db"
version=$(psql_in -c "SELECT distill.version()")
case "$version" in *"build $build"*) ;; *) fail "after a restart the server runs '$version', not build $build" ;; esac
[ "$(psql_in -c "$ask")" = "$before" ] || fail "the new build answers differently"
echo "after a restart: $version"
echo "upgrade: ok"
