#!/usr/bin/env bash
# Runs every test: engine tests (cargo test), in-database tests (cargo pgrx test) and SQL regression
# tests (pg_regress over tests/sql). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash scripts/setup.sh

echo "== format and lints"
# rustfmt.toml's width; clippy with every warning an error (and undocumented unsafe blocks denied in
# both crates' [lints]), on the private PostgreSQL tree the builds use (scripts/private_pg.sh).
cargo fmt --all --check
(source scripts/private_pg.sh && cargo clippy --workspace --all-targets --features pg15 -- -D warnings)

echo "== engine tests"
# The kernels this machine has, from the OS's CPU flags: a kernel test for one of them fails instead of
# skipping when the engine does not find it (engine/tests/common/mod.rs).
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
kernels=()
if has avx512f avx512bw avx512_vnni; then kernels+=(vnni); fi
if has avx2 fma f16c; then kernels+=(avx2); fi
if has amx_bf16 amx_tile; then kernels+=(amx); fi
DISTILL_EXPECT_KERNELS=$(IFS=,; echo "${kernels[*]}")
export DISTILL_EXPECT_KERNELS
echo "kernels this CPU has: ${DISTILL_EXPECT_KERNELS:-none}"
# Three tests compare the hand-written training step with autograd to 1e-3; on CPUs with AMX the
# training matmuls round through bf16, past that tolerance, so those three run on the f32 kernels
# (DISTILL_NO_AMX=1); the AMX kernels have tests of their own (tests/amx.rs, grad_check.rs).
exact_step_tests=(hand_written_step_equals_autograd shared_prefix_gives_the_same_loss_and_gradients
                  training_with_and_without_shared_prefixes_agrees)
DISTILL_MODEL_DIR="$root/models" cargo test -p distill-engine -- "${exact_step_tests[@]/#/--skip=}"
DISTILL_MODEL_DIR="$root/models" DISTILL_NO_AMX=1 cargo test -p distill-engine --test train -- "${exact_step_tests[@]}"

echo "== pgrx tests"
# The test build (with its pg_test functions) goes into the private copy of PostgreSQL that
# scripts/private_pg.sh makes, never over the system's files a running server may use.
pgrx_data=/tmp/pg_distill-pgrx-tests
rm -rf "$pgrx_data" && install -d -o postgres -g postgres "$pgrx_data"
(source scripts/private_pg.sh && cargo pgrx test pg15 --runas postgres --pgdata "$pgrx_data")

echo "== SQL regression tests"
# The real build, installed into the system PostgreSQL the way a user upgrades (atomically).
bash scripts/install_extension.sh >/dev/null
bash tests/regress.sh

echo "== dump and restore of a tuned model"
bash tests/dump_restore.sh

echo "== faults: engine panic, kill -9, fast shutdown"
bash tests/faults.sh

echo "== concurrency: 8 sessions while training, racing CREATEs, drop while in use"
bash tests/concurrency.sh

echo "== security: privilege escalation, leaks, squatting, floods, memory bombs, cancel latency"
bash tests/security.sh

echo "== upgrade: installing a new build under a running cluster"
bash tests/upgrade.sh

echo "== endpoints: llama-cpp-python's server, faults, keys, cancel, the distillation flow"
bash tests/endpoints.sh

echo "== hot standby: a streaming replica serves the primary's models, refuses writes"
bash tests/replica.sh

echo "== concurrent jobs: two workers, a cancel beside a solo-identical run, the memory guard"
bash tests/concurrent_jobs.sh

echo "== shared weights: one prepared copy per machine, rebuilt when damaged, private when unwritable"
bash tests/shared_weights.sh

echo "== CUDA build: the extension and the engine's tests built with --features cuda (the compiler from PyPI,"
echo "   stand-ins for the CUDA libraries), the device tests run here with no driver (no GPU needed; ~25 min clean)"
bash scripts/build_cuda.sh
