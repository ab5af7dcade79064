#!/usr/bin/env bash
# Engine generation speed on 2 threads (prompt and generated tokens/s). Peer comparisons: see BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo run -q -p distill-engine --example bench_generate -- --threads "${THREADS:-2}" "$@"
