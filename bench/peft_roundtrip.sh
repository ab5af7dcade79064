#!/usr/bin/env bash
# Adapter interop with Hugging Face PEFT, both ways, outside Postgres (too heavy for CI: torch venv).
#   bash bench/peft_roundtrip.sh EXPORTED.zip
# 1. pg_distill -> PEFT: EXPORTED.zip (from SELECT distill.export_adapter('model'), written to a file
#    as the README shows) is loaded with PEFT onto the Hugging Face checkpoint dequantized from the
#    base GGUF; the next-token logits of 5 prompts are compared with the engine's.
# 2. PEFT -> pg_distill: PEFT writes an adapter of its own (random A and B, all seven targets); the
#    engine reads that zip as distill.import_adapter() does, and the logits are compared again.
set -euo pipefail
cd "$(dirname "$0")/.."
exported=$(realpath "${1:?usage: bench/peft_roundtrip.sh EXPORTED_ADAPTER.zip}")
gguf=${GGUF:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
bash bench/venv.sh
py=bench/.venv/bin/python
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
cat >"$work/prompts.json" <<'JSON'
["I was charged $85 for roaming on my trip to Spain. Please refund it.",
 "My mobile data has been extremely slow for three days.",
 "Please add a new line for my daughter to my family plan.",
 "I want to close my account; I am moving abroad next month.",
 "Classify: the app keeps logging me out and I cannot see my bill."]
JSON
cargo build -q -p distill-engine --example adapter_logits
logits=target/debug/examples/adapter_logits
echo "== pg_distill -> PEFT ($exported)"
"$logits" --gguf "$gguf" --adapter "$exported" --prompts "$work/prompts.json" >"$work/ours.json"
"$py" -W ignore bench/peft_roundtrip.py --gguf "$gguf" --compare "$exported" --ours "$work/ours.json"
echo "== PEFT -> pg_distill (adapter written by PEFT)"
"$py" -W ignore bench/peft_roundtrip.py --gguf "$gguf" --make "$work/peft.zip"
"$logits" --gguf "$gguf" --adapter "$work/peft.zip" --prompts "$work/prompts.json" >"$work/ours_peft.json"
"$py" -W ignore bench/peft_roundtrip.py --gguf "$gguf" --compare "$work/peft.zip" --ours "$work/ours_peft.json"
