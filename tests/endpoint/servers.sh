#!/usr/bin/env bash
# Starts / stops the two local servers of the endpoint tests, both on 127.0.0.1:
#   llama  llama-cpp-python's OpenAI-compatible server (python -m llama_cpp.server) on the GGUF in
#          $DISTILL_MODEL (default: models/SmolLM2-135M-Instruct.Q4_1.gguf of this repo)
#   fault  tests/endpoint/fault_server.py in front of it (modes: base_url http://127.0.0.1:P/<mode>/v1)
#
#   bash tests/endpoint/servers.sh start DIR   # waits until both answer GET /v1/models (<= ~60 s)
#   bash tests/endpoint/servers.sh stop DIR
#
# start writes into DIR: llama.port, fault.port (free ports, picked by binding port 0), llama.pid,
# fault.pid, fault.key (the API key that the fault server's mode auth accepts: $DISTILL_FAULT_KEY,
# or a fixed test key), llama.log, fault.log. The python is tests/endpoint/.venv's, made by
# tests/endpoint/venv.sh (run here first: a no-op when up to date; the first time on a machine it
# compiles llama.cpp, a few minutes), or $ENDPOINT_PYTHON when set (then venv.sh is not run).
# Other settings: DISTILL_SEED (42), DISTILL_THREADS (2), START_TIMEOUT (60 s).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cmd="${1:-}"
dir="${2:-}"
[[ ( "$cmd" == start || "$cmd" == stop ) && -n "$dir" ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

# Stops the process in DIR/$1.pid if it is still the one that start launched (its command line
# names $2), first with TERM, then KILL after 5 s.
stop_one() {
    local pidf="$dir/$1.pid" pid
    [[ -f "$pidf" ]] || return 0
    pid="$(cat "$pidf")"
    if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$2"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
}

if [[ "$cmd" == stop ]]; then
    stop_one fault fault_server.py
    stop_one llama llama_cpp.server
    echo "endpoint servers stopped" >&2
    exit 0
fi

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
model="${DISTILL_MODEL:-$repo/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[[ -f "$model" ]] || { echo "servers.sh: no model at $model" >&2; exit 1; }
if [[ -n "${ENDPOINT_PYTHON:-}" ]]; then
    py="$ENDPOINT_PYTHON"
else
    bash "$here/venv.sh" >&2
    py="$here/.venv/bin/python"
fi
key="${DISTILL_FAULT_KEY:-sk-distill-test-0123456789abcdef}"
timeout="${START_TIMEOUT:-60}"

# Already running from an earlier start into the same DIR? Stop those first.
stop_one fault fault_server.py
stop_one llama llama_cpp.server

free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
llama_port="$(free_port)"
fault_port="$(free_port)"
while [[ "$fault_port" == "$llama_port" ]]; do fault_port="$(free_port)"; done

# setsid: own session, so neither is tied to the caller's terminal or process group, and nohup-like.
setsid "$py" -m llama_cpp.server --model "$model" --host 127.0.0.1 --port "$llama_port" \
    --n_ctx 2048 --n_threads "${DISTILL_THREADS:-2}" --seed "${DISTILL_SEED:-42}" \
    </dev/null >"$dir/llama.log" 2>&1 &
echo $! >"$dir/llama.pid"
setsid "$py" "$here/fault_server.py" --port "$fault_port" --upstream "http://127.0.0.1:$llama_port" \
    --key "$key" </dev/null >"$dir/fault.log" 2>&1 &
echo $! >"$dir/fault.pid"
echo "$llama_port" >"$dir/llama.port"
echo "$fault_port" >"$dir/fault.port"
(umask 077; echo "$key" >"$dir/fault.key")

deadline=$(( $(date +%s) + timeout ))
up() { curl -s -f -o /dev/null --max-time 2 "$1"; }
until up "http://127.0.0.1:$llama_port/v1/models" && up "http://127.0.0.1:$fault_port/ok/v1/models"; do
    for s in llama fault; do
        if ! kill -0 "$(cat "$dir/$s.pid")" 2>/dev/null; then
            echo "servers.sh: the $s server exited; the end of $dir/$s.log:" >&2
            tail -n 30 "$dir/$s.log" >&2
            stop_one fault fault_server.py; stop_one llama llama_cpp.server
            exit 1
        fi
    done
    if (( $(date +%s) >= deadline )); then
        echo "servers.sh: not answering after ${timeout}s; see $dir/llama.log, $dir/fault.log" >&2
        stop_one fault fault_server.py; stop_one llama llama_cpp.server
        exit 1
    fi
    sleep 0.5
done
echo "endpoint servers up: llama 127.0.0.1:$llama_port, fault 127.0.0.1:$fault_port (state in $dir)" >&2
