#!/usr/bin/env bash
# One copy of a model per machine: the prepared weights file beside the model (distill.share_weights).
#   1. the first session to load the model writes <model>.quantized.prepared (server log says so);
#   2. a later session maps that file (its /proc/PID/maps names it) and answers with the same text as
#      a session with its own copy (share_weights = off, which maps nothing);
#   3. a damaged file is rebuilt, not trusted (server log: "was corrupt"), and the answer is the same;
#   4. a model directory the server cannot write: the session keeps its own copy, says so in one
#      WARNING per session that does not name the directory (the server log has the reason), and
#      answers the same; nothing is left in the directory;
#   5. the server is alive after each step.
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/pg_distill-shared port=55445 db=distill_shared
source scripts/fresh_cluster.sh
fail() { echo "FAIL: $*" >&2; tail -20 "$work/data/server.log" >&2; exit 1; }
alive() { [ "$(psql_in -c "SELECT 1")" = 1 ] || fail "the server is not answering after $1"; }
model=$(readlink -f /usr/share/postgresql/15/pg_distill/models/SmolLM2-135M-Instruct.Q4_1.gguf)
[ -f "$model" ] || model=$(readlink -f models/SmolLM2-135M-Instruct.Q4_1.gguf)
# A writable model directory of the test's own (the model linked in) and a read-only one (root's).
install -d -o postgres -g postgres "$work/models" && ln -s "$model" "$work/models/smollm2.gguf"
install -d -o root -g root -m 755 "$work/ro" && ln -s "$model" "$work/ro/smollm2.gguf"
prepared=$work/models/smollm2.gguf.quantized.prepared
psql_in -c "CREATE EXTENSION pg_distill" -c "ALTER SYSTEM SET distill.model_dir = '$work/models'" \
        -c "SELECT pg_reload_conf()" >/dev/null
ask="SELECT distill.complete('smollm2', 'Name one colour.', '{\"max_tokens\": 12}')"
mapped() { # SQL before the question, then: prints the answer and whether the backend maps $prepared
  # (read while the session is still connected: \! runs in psql, as postgres, beside its backend).
  psql_in <<SQL
$1;
$ask;
\o $work/pid
SELECT pg_backend_pid();
\o
\! grep -qF "$prepared" /proc/\$(cat $work/pid)/maps && echo mapped || echo unmapped
SQL
}

# 1. The first load writes the file.
first=$(mapped "SET distill.share_weights = on")
[ -f "$prepared" ] || fail "no prepared file after the first load"
grep -q "wrote the prepared weights .*smollm2.gguf.quantized.prepared (the file was missing)" "$work/data/server.log" ||
  fail "the server log does not say the file was written"
[ "$(stat -c %a "$prepared")" = 644 ] || fail "the prepared file is not readable by all: $(stat -c %a "$prepared")"
echo "ok: the first session wrote the prepared file ($(du -m "$prepared" | cut -f1) MB)"
alive "the first load"

# 2. Later sessions map it; answers equal a private copy's.
shared=$(mapped "SET distill.share_weights = on")
private=$(mapped "SET distill.share_weights = off")
[ "$(sed -n 2p <<<"$shared")" = mapped ] || fail "a later session does not map the prepared file"
[ "$(sed -n 2p <<<"$private")" = unmapped ] || fail "share_weights = off still maps the file"
[ "$(head -1 <<<"$shared")" = "$(head -1 <<<"$private")" ] && [ "$(head -1 <<<"$first")" = "$(head -1 <<<"$shared")" ] ||
  fail "answers differ: shared '$(head -1 <<<"$shared")', private '$(head -1 <<<"$private")', first '$(head -1 <<<"$first")'"
echo "ok: a later session maps the file and answers as a private copy does: $(head -1 <<<"$shared")"

# 3. A damaged file (one byte flipped in the payload, swapped in by rename) is rebuilt.
python3 - "$prepared" <<'PY'
import os, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x55
open(p + ".bad", "wb").write(b)
os.rename(p + ".bad", p)
PY
rebuilt=$(mapped "SET distill.share_weights = on")
grep -q "wrote the prepared weights .*(the file was corrupt (payload checksum mismatch))" "$work/data/server.log" ||
  fail "a damaged file was not rebuilt"
[ "$(head -1 <<<"$rebuilt")" = "$(head -1 <<<"$shared")" ] && [ "$(sed -n 2p <<<"$rebuilt")" = mapped ] ||
  fail "after the rebuild: $rebuilt"
echo "ok: a damaged file is rebuilt and mapped, same answer"
alive "the rebuild"

# 4. A read-only model directory: a private copy, one WARNING per session, no directory named.
out=$(psql_in -c "SET distill.model_dir = '$work/ro'" -c "$ask" -c "$ask" 2>&1)
warnings=$(grep -c "WARNING:" <<<"$out" || true)
[ "$warnings" = 1 ] || fail "expected one WARNING in the session, got $warnings: $out"
grep -q "loaded as this session's own copy" <<<"$out" || fail "the WARNING does not say why: $out"
! grep -q "$work" <<<"$out" || fail "the WARNING names the model directory: $out"
[ "$(grep -v WARNING <<<"$out" | head -1)" = "$(head -1 <<<"$shared")" ] || fail "the private copy answers differently: $out"
grep -q "is not shared: cannot write $work/ro/smollm2.gguf.quantized.prepared" "$work/data/server.log" ||
  fail "the server log does not give the reason"
[ "$(ls -A "$work/ro")" = smollm2.gguf ] || fail "files left in the read-only directory: $(ls -A "$work/ro")"
echo "ok: a read-only directory gives a private copy and one WARNING per session, the reason in the server log"
alive "the read-only directory"
echo "shared weights: all checks passed"
