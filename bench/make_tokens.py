#!/usr/bin/env python3
"""Write a tokens FILE for peft_train.py from a CSV (id,text,label), with the Hugging Face tokenizer
converted from the GGUF (offline). Rendering follows engine/examples/finetune_eval.rs: the prompt is
one user turn through the GGUF's chat template with the generation prompt, the completion is the
label followed by EOS. For smoke tests; the benchmark proper uses the ids the engine writes.

    bench/.venv/bin/python bench/make_tokens.py --csv /work/shared/data/banking77_10intent/train.csv \
        --train 40 --eval 16 --out /tmp/tokens.json
"""
import argparse
import csv
import json
import random
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_from_gguf import DEFAULT_GGUF, load_tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--train", type=int, default=40)
    ap.add_argument("--eval", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="seed of the row sample")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    with open(args.csv, newline="") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    labels = sorted({l for _, l in rows})  # as finetune_eval.rs: every label of the CSV
    random.Random(args.seed).shuffle(rows)  # the CSV is grouped by label
    rows = rows[: args.train + args.eval]
    instruction = (f"Classify this customer request into one of: {', '.join(labels)}. "
                   "Reply with the category only.")
    tok = load_tokenizer(args.gguf)
    eos = tok.convert_tokens_to_ids("<|im_end|>")

    def encode(text, label):
        prompt = tok.apply_chat_template([{"role": "user", "content": f"{instruction}\nRequest: {text}"}],
                                         add_generation_prompt=True, tokenize=False)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(label, add_special_tokens=False)["input_ids"] + [eos]
        return {"ids": p + c, "completion_start": len(p)}

    ex = [encode(t, l) for t, l in rows]
    out = {"train": ex[: args.train], "eval": ex[args.train:]}
    with open(args.out, "w") as f:
        json.dump(out, f)
    lens = [len(e["ids"]) for e in ex]
    print(f"wrote {args.out}: {len(out['train'])} train, {len(out['eval'])} eval, "
          f"lengths {min(lens)}..{max(lens)}, eos {eos}", file=sys.stderr)


if __name__ == "__main__":
    main()
