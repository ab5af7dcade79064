#!/usr/bin/env python3
"""llama.cpp peer of the classification benchmark: greedy completions for a list of prompts.

    bench/.venv-llama/bin/python bench/llamacpp_classify.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompts /tmp/prompts.json --max-tokens 12 --threads 2 --out /tmp/llamacpp.json

--prompts is a JSON list of prompt strings, one per row (rows may repeat). Each is sent as the user
message of a one-message chat, exactly as `distill.complete(model, prompt, '{"max_tokens": N}')` does:

* The chat prompt is rendered here with the GGUF's own `tokenizer.chat_template` through jinja2, the
  way Hugging Face `apply_chat_template` renders it (sandboxed environment, trim_blocks and
  lstrip_blocks on, `bos_token`/`eos_token`/`raise_exception` defined, add_generation_prompt=True),
  which is what the engine does with minijinja. llama.cpp's own chat handlers are not used. For
  SmolLM2 the template adds its default system message ("You are a helpful AI assistant named
  SmolLM, trained by Hugging Face") when the chat has none.
* The text is tokenized by llama.cpp with special tokens parsed (`<|im_start|>` -> one id) and BOS
  prepended only when the GGUF sets tokenizer.ggml.add_bos_token (SmolLM2's says false), and not
  twice if the template already wrote it: the engine's rule.
* Greedy decoding (llama.cpp's greedy sampler: temp 0, top_k 1, no penalties), up to --max-tokens
  new tokens, stopping at the GGUF's EOS id (and EOT id if it has one), the engine's stop set. The
  stop token is not part of the text; special tokens are not rendered; the text is stripped of
  surrounding whitespace only.
* Like the engine's prefix cache, llama-cpp-python's Llama.generate reuses the KV cache of the
  longest prefix the prompt shares with the previous call (the instruction shared by all rows), so
  only each row's own suffix is computed. --no-prefix-reuse computes every prompt in full.

Prints and writes one JSON object: rows, distinct_prompts, seconds (the generation loop only),
rows_per_s, load_seconds, peak_rss_mib (ru_maxrss), outputs (one text per row), and a few extras
(prompt/completion token counts, versions, system info).
"""
import argparse
import json
import os
import resource
import sys
import time


def render_chat(template_source, prompt, bos_token, eos_token):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tmpl = env.from_string(template_source)
    return tmpl.render(
        messages=[{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
    )


# Used when a GGUF has no template (the engine's and llama.cpp's fallback): ChatML.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Peer:
    """The loaded model plus the engine's prompt/stop rules; one per process (or per backend)."""

    def __init__(self, gguf, threads=2, n_ctx=2048, n_batch=512, seed=42, kv_f32=False):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=gguf,
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=0,
            seed=seed,
            logits_all=False,
            verbose=False,
            # llama.cpp's default KV cache is F16; --kv-f32 keeps keys/values in F32 (GGML_TYPE_F32 = 0).
            **({"type_k": 0, "type_v": 0} if kv_f32 else {}),
        )
        md = self.llm.metadata
        self.template = md.get("tokenizer.chat_template") or CHATML
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.bos_id = llama_cpp.llama_vocab_bos(vocab)
        eos_id = int(md.get("tokenizer.ggml.eos_token_id", llama_cpp.llama_vocab_eos(vocab)))
        self.stop_ids = {eos_id}
        if "tokenizer.ggml.eot_token_id" in md:
            self.stop_ids.add(int(md["tokenizer.ggml.eot_token_id"]))
        # The engine's rule: add_bos_token from the GGUF, false when absent.
        self.add_bos = md.get("tokenizer.ggml.add_bos_token", "false").lower() == "true" and self.bos_id >= 0
        piece = lambda i: self.llm.detokenize([i], special=True).decode("utf-8", "replace") if i >= 0 else ""
        self.bos_token, self.eos_token = piece(self.bos_id), piece(eos_id)

    def prompt_ids(self, prompt):
        text = render_chat(self.template, prompt, self.bos_token, self.eos_token)
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def complete(self, prompt, max_tokens=12, prefix_reuse=True):
        """(text, prompt token count, completion token count)."""
        ids = self.prompt_ids(prompt)
        if not prefix_reuse:
            self.llm.reset()
        out = []
        if max_tokens > 0:
            for tok in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
                if tok in self.stop_ids:
                    break
                out.append(tok)
                if len(out) >= max_tokens:
                    break
        text = self.llm.detokenize(out, special=False).decode("utf-8", "replace")
        return text.strip(), len(ids), len(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompts", required=True, help="JSON list of prompt strings, one per row")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-prefix-reuse", action="store_true", help="compute every prompt in full")
    ap.add_argument("--kv-f32", action="store_true", help="F32 KV cache instead of llama.cpp's default F16")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    with open(args.prompts) as f:
        prompts = json.load(f)
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        sys.exit("--prompts must be a JSON list of strings")

    t0 = time.perf_counter()
    peer = Peer(args.gguf, threads=args.threads, n_ctx=args.n_ctx, n_batch=args.n_batch, seed=args.seed,
                kv_f32=args.kv_f32)
    load_seconds = time.perf_counter() - t0

    outputs, prompt_tokens, completion_tokens = [], 0, 0
    t0 = time.perf_counter()
    for p in prompts:
        text, n_prompt, n_out = peer.complete(p, args.max_tokens, prefix_reuse=not args.no_prefix_reuse)
        outputs.append(text)
        prompt_tokens += n_prompt
        completion_tokens += n_out
    seconds = time.perf_counter() - t0

    import llama_cpp

    result = {
        "impl": "llama-cpp-python",
        "rows": len(prompts),
        "distinct_prompts": len(set(prompts)),
        "seconds": round(seconds, 3),
        "rows_per_s": round(len(prompts) / seconds, 3) if seconds > 0 else None,
        "load_seconds": round(load_seconds, 3),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "prefix_reuse": not args.no_prefix_reuse,
        "kv_cache": "f32" if args.kv_f32 else "f16",
        "add_bos": peer.add_bos,
        "stop_ids": sorted(peer.stop_ids),
        "llama_cpp_python_version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "outputs": outputs,
    }
    s = json.dumps(result, ensure_ascii=False)
    if args.out:
        with open(args.out, "w") as f:
            f.write(s + "\n")
    summary = {k: v for k, v in result.items() if k != "outputs"}
    print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    main()
