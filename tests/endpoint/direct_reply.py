#!/usr/bin/env python3
"""Greedy replies that llama.cpp gives directly, to compare with an endpoint's greedy replies.

    echo '["Say hello", "Name a colour"]' | \
        tests/endpoint/.venv/bin/python tests/endpoint/direct_reply.py --model M.gguf --max-tokens 16

Reads a JSON list of user prompts on stdin and prints a JSON list of the replies (strings, same
order). Each prompt is one user message, formatted with the GGUF's own chat template (no
chat_format given, as llama-cpp-python's server does by default), and decoded greedily
(temperature 0) for at most --max-tokens tokens: the same computation that
`python -m llama_cpp.server --model M.gguf --n_ctx 2048` does for
{"messages": [{"role": "user", "content": p}], "temperature": 0, "max_tokens": N}.

One difference matters even under greedy decoding: the server's request model defaults
repeat_penalty to 1.1 (a llama-cpp-python extension; an OpenAI-style request has no such field),
while Llama.create_chat_completion defaults it to 1.0, and llama.cpp applies the penalty before
the greedy pick. So --repeat-penalty defaults to the server's 1.1 (with 1.0 the replies of
SmolLM2-135M already differ within 24 tokens). The other sampling defaults (top_k, top_p, min_p)
do not take part when temperature is 0.
"""
import argparse
import json
import sys

import llama_cpp


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="GGUF file")
    p.add_argument("--max-tokens", type=int, required=True)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat-penalty", type=float, default=1.1,
                   help="1.1: llama_cpp.server's default for a request without the field")
    args = p.parse_args()

    prompts = json.load(sys.stdin)
    if not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts):
        sys.exit("direct_reply.py: stdin must be a JSON list of strings")
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.n_ctx, seed=args.seed,
                          n_threads=args.threads, verbose=False)
    replies = []
    for prompt in prompts:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}],
                                         temperature=0, max_tokens=args.max_tokens,
                                         repeat_penalty=args.repeat_penalty)
        replies.append(out["choices"][0]["message"]["content"])
    json.dump(replies, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
