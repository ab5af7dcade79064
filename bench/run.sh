#!/usr/bin/env bash
# pg_distill against its peers, in one invocation, 2 threads each, ratios first; writes BENCHMARKS.md.
#   T  training        distill.finetune() and the engine alone vs torch + PEFT, LoRA r 8 on banking77_10intent
#   C  classification  SELECT distill.complete() over 1,000 ticket rows vs llama.cpp (Python loop, PL/Python)
#   B  batch runs      distill.complete_rows() over the same rows vs complete() per row; an endpoint
#                      (llama-cpp-python's server) with 8 requests in flight vs 1
#   M  memory          8 sessions at once on one tuned model: PSS and rows/s with the weights shared
#                      (prepared file) vs a private copy per session
#   A  accuracy        fine-tuned through SQL (3 epochs, the product's default) and scored with
#                      distill.evaluate() on banking77_10intent and the whole BANKING77, beside TF-IDF +
#                      logistic regression on the same rows
#   P  profiles        perf profiles of the training step and of classification
#
#   bash bench/run.sh            # every phase: about 2.5 hours on the 2-core machine here (A ~1.7 h)
#   bash bench/run.sh C P        # some phases; BENCHMARKS.md keeps the other phases' last results
#   SMOKE=1 bash bench/run.sh    # every phase on a handful of rows, into /tmp (checks the scripts, ~10 min)
#
# It installs what it needs: scripts/setup.sh (PostgreSQL, cargo-pgrx, the model), the extension
# (cargo pgrx install), bench/.venv (torch, transformers, peft, gguf, scikit-learn; bench/venv.sh) and
# bench/.venv-llama (llama-cpp-python built from source; bench/venv_llama.sh). PL/Python joins when
# postgresql-plpython3-15 can be installed. Run it on an otherwise idle machine: the timings are
# meaningless under load (llama.cpp's spinning threads slow ~15x).
# Overrides: RESULTS (where results and their BENCHMARKS.md go; default bench/results and ./BENCHMARKS.md,
# e.g. bench/results/extra/NAME for another machine's run), C_ROWS (default 1000), FORMATS (C, "file"),
# T_ROWS (982), T_TARGETS (T, "all"; "q,v all" adds q,v), EPOCHS_10, EPOCHS_77 (A: 3), EVAL_CHOICES (A: 1),
# B77_TRAIN_PER, B77_TEST_PER (A on BANKING77: "all", or a stratified subsample, see finetune_sql.sh), B77_DIR (where BANKING77's train.csv and test.csv are; ../shared/data/banking77).
set -euo pipefail
cd "$(dirname "$0")/.."
phases=${*:-T C B M A E P}
# RESULTS elsewhere (another machine's run, say) gets its own BENCHMARKS.md beside its results.
res=${RESULTS:-bench/results} report=${RESULTS:+$RESULTS/}BENCHMARKS.md
if [ -n "${SMOKE:-}" ]; then
  res=${RESULTS:-/tmp/pg_distill-bench-smoke} report=$res/BENCHMARKS.md
  export C_ROWS=6 ENDPOINT_ROWS=3 SLOW_ROWS=3 T_ROWS=16 B10_TRAIN_ROWS=16 B10_TEST_ROWS=6 B77_TRAIN_PER=1 B77_TEST_PER=1 EPOCHS_10=1 EPOCHS_77=1 PROFILE_ROWS=8 PROFILE_PROMPTS=6 PER_MR_TRAIN=1 EPOCHS=1 M_ROWS=2
fi
export B77_DIR=${B77_DIR:-$PWD/../shared/data/banking77}
log() { printf '\n=== bench: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)" >&2; }
for p in $phases; do [[ $p =~ ^[TCBMAEP]$ ]] || { echo "unknown phase $p (T, C, B, M, A, E, P)" >&2; exit 2; }; done
if [[ " $phases " == *" A "* && ! -f $B77_DIR/train.csv ]]; then
  echo "BANKING77 not found in $B77_DIR (phase A needs it; set B77_DIR)" >&2; exit 1
fi

log "installing"
bash scripts/setup.sh >/dev/null
dpkg -s postgresql-plpython3-15 >/dev/null 2>&1 \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-plpython3-15 >/dev/null 2>&1 \
  || echo "(postgresql-plpython3-15 not installable: the PL/Python peer is left out)" >&2
bash scripts/install_extension.sh >/dev/null
bash bench/venv.sh
bash bench/venv_llama.sh
cargo build -q -p distill-engine --example bench_train --example classify_rows
mkdir -p "$res"

# Records the machine, commit and date of a phase that has just finished (others are kept: phases of
# one results folder may come from different invocations, so each carries its own machine).
stamp() {
  python3 - "$res/environment.json" "$1" <<'PY'
import json, os, subprocess, sys, time
path, phase = sys.argv[1], sys.argv[2]
env = json.load(open(path)) if os.path.exists(path) else {"phases": {}}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
env.update(cpu=cpu, cores=os.cpu_count(), memory=f"{int(mem) / 2**20:.0f} GiB")
commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
env["phases"][phase] = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "machine": f"{cpu}, {os.cpu_count()} cores, {env['memory']}"}
json.dump(env, open(path, "w"), indent=1)
PY
}
# A phase writes into $res/.new-X and replaces $res/X only when it succeeded.
fresh() { rm -rf "$res/.new-$1" && mkdir -p "$res/.new-$1" && (cd "$res/.new-$1" && pwd); }
keep() { rm -rf "${res:?}/$1" && mv "$res/.new-$1" "$res/$1" && stamp "$1"; }

for phase in $phases; do
  case $phase in
    T)
      log "T: engine alone and torch+PEFT (distill.finetune()'s row comes from phase A's 10intent job)"
      dir=$(fresh T)
      OUT=$dir ROWS=${T_ROWS:-982} TARGETS=${T_TARGETS:-all} bash bench/train_vs_peft.sh
      rm -rf "$dir/tokens.json" "$dir"/init-* && keep T
      ;;
    C)
      log "C: classification"
      dir=$(fresh C) tmp=/tmp/pg_distill-bench-classify
      OUT=$tmp ROWS=${C_ROWS:-1000} FORMATS=${FORMATS:-file} bash bench/classify_vs_llamacpp.sh
      cp "$tmp"/{*.json,*.out,*.log} "$dir/" && rm -f "$dir/prompts.json" "$dir/llamacpp.full.json" && keep C
      ;;
    B)
      log "B: batch runs (complete_rows)"
      dir=$(fresh B) tmp=/tmp/pg_distill-bench-batch
      OUT=$tmp ROWS=${C_ROWS:-1000} bash bench/complete_rows.sh
      cp "$tmp"/*.json "$dir/" && rm -f "$dir/prompts.json" && keep B
      ;;
    M)
      log "M: memory of 8 sessions, shared weights vs a copy each"
      dir=$(fresh M) tmp=/tmp/pg_distill-bench-memory
      OUT=$tmp ROWS=${M_ROWS:-48} bash bench/shared_weights.sh
      cp "$tmp"/*.json "$dir/" && keep M
      ;;
    A)
      log "A: fine-tuning through SQL, evaluate(), TF-IDF + logistic regression"
      dir=$(fresh A)
      OUT=$dir bash bench/finetune_sql.sh
      bench/.venv/bin/python bench/tfidf_baseline.py --train data/banking77_10intent/train.csv \
        --test data/banking77_10intent/test.csv >"$dir/tfidf-10intent.json"
      per=() # the same rows as the job: the whole splits unless a subsample was asked for
      [ "${B77_TRAIN_PER:-all}" = all ] || per+=(--train-per "$B77_TRAIN_PER")
      [ "${B77_TEST_PER:-all}" = all ] || per+=(--test-per "$B77_TEST_PER")
      bench/.venv/bin/python bench/tfidf_baseline.py --train "$B77_DIR/train.csv" --test "$B77_DIR/test.csv" \
        "${per[@]}" >"$dir/tfidf-banking77.json"
      python3 bench/report.py accuracy "$dir"
      keep A
      ;;
    E)
      log "E: e2e_nlg extraction and generation through SQL"
      dir=$(fresh E)
      OUT=$dir bash bench/e2e_sql.sh
      python3 bench/report.py e2e "$dir"
      keep E
      ;;
    P)
      log "P: profiles"
      dir=$(fresh profiles)
      # perf may be refused (no perf_event_open in a container): the other phases still get reported.
      if bash bench/profile.sh "$dir"; then keep profiles; else echo "(profiles failed: left out)" >&2; fi
      ;;
  esac
done

python3 bench/report.py markdown "$res" >"$report"
log "$report written"
python3 bench/report.py summary "$res"
