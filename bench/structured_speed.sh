#!/usr/bin/env bash
# What structured outputs cost per generated token (llguidance's mask, timed apart from the forward
# pass), on e2e_nlg descriptions, next to free decoding of the same prompts: engine/examples/bench_structured.rs.
#   bash bench/structured_speed.sh [--rows N] [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p distill-engine --example bench_structured -- --threads "${THREADS:-2}" "$@"
