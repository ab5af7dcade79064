-- llama.cpp inside PostgreSQL through PL/Python: the "do it yourself" peer of
--   SELECT distill.complete('smollm2-135m', prompt, '{"max_tokens": 12}') FROM tickets
-- with exactly the prompt rendering, BOS rule, greedy decoding and stop ids of
-- bench/llamacpp_classify.py (it imports that file's Peer class), one model per backend kept in GD.
--
-- Needs: apt-get install postgresql-plpython3-15 (126 kB, one package; plpython3u runs the system
-- python3.11), and bench/.venv-llama (bash bench/venv_llama.sh), whose site-packages are put on
-- sys.path; all of it readable by the postgres OS user. plpython3u is untrusted: a superuser creates
-- the function.
--
-- Settings (custom GUCs, read on the first call in a backend; e.g. PGOPTIONS='-c bench.llamacpp_dir=...'
-- or SET / ALTER DATABASE ... SET):
--   bench.llamacpp_dir      the bench/ folder (holds llamacpp_classify.py and .venv-llama/)   required
--   bench.llamacpp_gguf     the GGUF file                                                   required
--   bench.llamacpp_threads  llama.cpp threads (default 2)
--   bench.llamacpp_prefix_reuse  on/off (default on: reuse the KV of the prefix shared with the
--                           previous prompt, as the engine's prefix cache does)
--
--   SELECT bench_llamacpp_complete(prompt) FROM ...;             -- max 12 new tokens
--   SELECT bench_llamacpp_complete(prompt, 12) FROM ...;
CREATE EXTENSION IF NOT EXISTS plpython3u;

CREATE OR REPLACE FUNCTION bench_llamacpp_complete(prompt text, max_tokens int DEFAULT 12)
RETURNS text
LANGUAGE plpython3u
VOLATILE STRICT
AS $$
peer = GD.get("llamacpp_peer")
if peer is None:
    import glob, os, sys

    def setting(name, default=None):
        v = plpy.execute("SELECT current_setting(%s, true) AS v" % plpy.quote_literal(name))[0]["v"]
        if not v:
            if default is None:
                plpy.error("set %s first" % name)
            return default
        return v

    bench_dir = setting("bench.llamacpp_dir")
    gguf = setting("bench.llamacpp_gguf")
    threads = int(setting("bench.llamacpp_threads", "2"))
    site = sorted(glob.glob(os.path.join(bench_dir, ".venv-llama", "lib", "python3*", "site-packages")))
    if not site:
        plpy.error("no %s/.venv-llama site-packages: run bench/venv_llama.sh" % bench_dir)
    for p in (site[-1], bench_dir):
        if p not in sys.path:
            sys.path.insert(0, p)
    from llamacpp_classify import Peer
    peer = Peer(gguf, threads=threads)
    GD["llamacpp_peer"] = peer
    GD["llamacpp_prefix_reuse"] = setting("bench.llamacpp_prefix_reuse", "on").lower() in ("on", "true", "1", "yes")
text, _, _ = peer.complete(prompt, max_tokens, prefix_reuse=GD["llamacpp_prefix_reuse"])
return text
$$;
