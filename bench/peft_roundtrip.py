"""PEFT side of the adapter round trip (see peft_roundtrip.sh).

  --compare ZIP --ours JSON : load ZIP with Hugging Face PEFT onto the checkpoint dequantized from the
                              GGUF, run the same token ids as the engine did (JSON from the
                              adapter_logits example) and print the largest logit difference.
  --make ZIP                : write a PEFT LoRA adapter (all seven targets, random A and B) as a zip,
                              for the other direction (PEFT -> pg_distill).
"""
import argparse
import json
import os
import sys
import tempfile
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_from_gguf import load_llama_from_gguf  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def compare(args):
    from peft import PeftModel
    model, _ = load_llama_from_gguf(args.gguf)
    with tempfile.TemporaryDirectory() as d:
        zipfile.ZipFile(args.compare).extractall(d)
        # The files may sit in a folder inside the zip.
        folder = next(root for root, _, files in os.walk(d) if "adapter_config.json" in files)
        model = PeftModel.from_pretrained(model, folder)
    model.eval()
    ours = json.load(open(args.ours))
    rows = []
    with torch.no_grad():
        for item in ours:
            logits = model(torch.tensor([item["ids"]])).logits[0, -1].float()
            theirs = torch.tensor(item["logits"])
            rows.append({
                "prompt_tokens": len(item["ids"]),
                "max_abs_diff": float((logits - theirs).abs().max()),
                "logit_range": float(logits.max() - logits.min()),
                "same_argmax": bool(int(logits.argmax()) == int(theirs.argmax())),
            })
    print(json.dumps({"adapter": args.compare, "prompts": rows,
                      "max_abs_diff": max(r["max_abs_diff"] for r in rows),
                      "all_same_argmax": all(r["same_argmax"] for r in rows)}))


def make(args):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(args.seed)
    model, _ = load_llama_from_gguf(args.gguf)
    # init_lora_weights=False: A and B both random (PEFT's default B = 0 would be a no-op adapter).
    config = LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=TARGETS, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM", init_lora_weights=False)
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.1)  # a delta the size a trained adapter has, not nn.Linear's init scale
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        with zipfile.ZipFile(args.make, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(os.listdir(d)):
                z.write(os.path.join(d, f), f"peft_adapter/{f}")
    print(f"wrote {args.make}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--compare")
    ap.add_argument("--ours")
    ap.add_argument("--make")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.make:
        make(args)
    elif args.compare and args.ours:
        compare(args)
    else:
        ap.error("give --compare ZIP --ours JSON, or --make ZIP")


if __name__ == "__main__":
    main()
