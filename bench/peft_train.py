#!/usr/bin/env python3
"""Peer benchmark: LoRA fine-tuning with torch + Hugging Face PEFT on the same model, token ids and
hyper-parameters as the pg_distill engine (engine/src/train.rs).

    bench/.venv/bin/python bench/peft_train.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --tokens tokens.json --targets q_proj,v_proj --epochs 1 --batch-size 8 --lr 1e-3 \
        --r 8 --alpha 16 --warmup-ratio 0.1 --max-grad-norm 1.0 --seed 42 --threads 2

--tokens FILE: {"train": [{"ids": [...], "completion_start": k}, ...], "eval": [...]}; ids is the
whole sequence (chat-rendered prompt, completion, EOS); the loss is taken on ids[t] for
t >= completion_start, predicted from position t-1.

Differences from the engine, by construction: batches are right-padded (the engine packs examples
back to back, no padding). By default the shuffle uses Python's random.Random(seed) and LoRA A is
drawn by torch, so the order and initial values differ from the engine's while their distributions
match; --order engine takes the engine's order from the tokens file ("orders", one list per epoch) and
--init-adapter DIR the engine's initial adapter (bench_train --dump-init DIR), so both sides start from
the same point and see the examples in the same order (eval losses then differ by numerics only).

Prints ONE JSON line on stdout; progress goes to stderr.
"""
import argparse
import json
import math
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_initial_adapter(model, directory, torch):
    """Copies every lora_A/lora_B of a saved PEFT adapter into the model's (untrained) adapter; each of
    the model's LoRA parameters must be found, with the same shape."""
    from safetensors.torch import load_file
    saved = load_file(os.path.join(directory, "adapter_model.safetensors"))
    params = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    if set(params) != set(saved):
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise SystemExit(f"--init-adapter {directory}: tensors do not match the model's LoRA parameters "
                         f"(missing {missing[:3]}..., unexpected {extra[:3]}...)")
    with torch.no_grad():
        for name, p in params.items():
            t = saved[name]
            if tuple(t.shape) != tuple(p.shape):
                raise SystemExit(f"--init-adapter {directory}: {name} is {tuple(t.shape)}, expected {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))


def parse_targets(s):
    if s.strip().lower() == "all":
        return list(ALL_TARGETS)
    out = []
    for t in s.split(","):
        t = t.strip()
        if not t:
            continue
        if not t.endswith("_proj"):
            t += "_proj"  # accept the engine's short names: q,k,v,o,gate,up,down
        if t not in ALL_TARGETS:
            raise SystemExit(f"unknown target {t!r}; expected a subset of {ALL_TARGETS} or 'all'")
        out.append(t)
    return out


def engine_lr_lambda(warmup, total):
    """engine/src/train.rs learning_rate(): step < warmup: (step+1)/warmup; else (total-step)/(total-warmup)."""
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def make_batch(examples, pad_id, torch):
    """Right-padded batch: input ids, attention mask, and a target mask over positions 1..L-1."""
    lens = [len(e["ids"]) for e in examples]
    L = max(lens)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), L), dtype=torch.long)
    labels = torch.full((len(examples), L), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["ids"])
        row = torch.tensor(e["ids"], dtype=torch.long)
        ids[i, :n] = row
        attn[i, :n] = 1
        cs = max(1, int(e["completion_start"]))
        labels[i, cs:n] = row[cs:n]
    return ids, attn, labels, sum(lens), len(examples) * L


def ce_sum(model, ids, attn, labels, torch):
    """Sum of cross-entropy over label != -100 (labels[t] predicted from logits[t-1]) and its count."""
    device = next(model.parameters()).device
    ids, attn, labels = ids.to(device), attn.to(device), labels.to(device)
    logits = model(input_ids=ids, attention_mask=attn).logits
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    loss_sum = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return loss_sum, int((shift_labels != -100).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--targets", default="q_proj,v_proj", help="comma list of *_proj (or q,v,...) or 'all'")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--schedule", choices=["engine", "hf"], default="engine",
                    help="engine: warm-up lr*(step+1)/warmup as engine/src/train.rs (default); "
                         "hf: transformers.get_linear_schedule_with_warmup (lr 0 on the first step)")
    ap.add_argument("--order", choices=["own", "engine"], default="own",
                    help="own: shuffle with random.Random(seed); engine: the tokens file's \"orders\"")
    ap.add_argument("--init-adapter", default=None,
                    help="PEFT adapter directory whose lora_A/lora_B start training (bench_train --dump-init)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = all; for smoke tests)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (the engine's device path's peer)")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="the frozen base's dtype (bf16 as the engine holds it on a GPU; PEFT keeps the adapter f32)")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    import peft
    from peft import LoraConfig, get_peft_model
    from hf_from_gguf import load_llama_from_gguf
    import transformers  # noqa: F401  (so the baseline below includes it)
    # RSS of the interpreter with torch/transformers/peft imported, before the model: the PyPI torch
    # wheel is a CUDA build and its libraries alone account for several hundred MiB here.
    baseline_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    with open(args.tokens) as f:
        data = json.load(f)
    train = data["train"]
    evals = data.get("eval") or []
    if not train:
        raise SystemExit("no training examples")
    targets = parse_targets(args.targets)

    t0 = time.time()
    base, cfg = load_llama_from_gguf(args.gguf, dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    base = base.to(args.device)
    load_s = time.time() - t0
    pad_id = cfg["pad_token_id"] if cfg.get("pad_token_id") is not None else cfg["eos_token_id"]
    torch.manual_seed(args.seed)  # LoRA init draws from here
    lcfg = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, lcfg)
    if args.init_adapter:
        load_initial_adapter(model, args.init_adapter, torch)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"loaded {args.gguf} in {load_s:.1f}s; targets {targets}; trainable params {trainable}; "
          f"{len(train)} train / {len(evals)} eval examples", file=sys.stderr)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup = math.ceil(args.warmup_ratio * total_steps)
    if args.schedule == "hf":
        from transformers import get_linear_schedule_with_warmup
        sched = get_linear_schedule_with_warmup(opt, warmup, total_steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, engine_lr_lambda(warmup, total_steps))

    rng = random.Random(args.seed)
    order = list(range(len(train)))
    if args.order == "engine":
        orders = data.get("orders") or []
        if len(orders) < args.epochs or any(sorted(o) != order for o in orders[:args.epochs]):
            raise SystemExit(f"--order engine: the tokens file needs {args.epochs} permutations of the "
                             f"{len(train)} training examples under \"orders\"")
    real_tokens = padded_tokens = steps = 0
    epoch_losses = []
    model.train()
    t_start = time.perf_counter()
    stop = False
    for epoch in range(args.epochs):
        if args.order == "engine":
            order = list(orders[epoch])
        else:
            rng.shuffle(order)
        loss_sum_epoch, loss_tok_epoch = 0.0, 0
        for b in range(0, len(order), args.batch_size):
            batch = [train[i] for i in order[b:b + args.batch_size]]
            ids, attn, labels, real, padded = make_batch(batch, pad_id, torch)
            lr_now = opt.param_groups[0]["lr"]
            s, n = ce_sum(model, ids, attn, labels, torch)
            loss = s / max(n, 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm) if args.max_grad_norm > 0 else None
            opt.step()
            sched.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise SystemExit(f"training diverged (loss {lv} at step {steps + 1})")
            steps += 1
            real_tokens += real
            padded_tokens += padded
            loss_sum_epoch += lv * n
            loss_tok_epoch += n
            el = time.perf_counter() - t_start
            print(f"step {steps:>4}/{total_steps} epoch {epoch + 1} loss {lv:.4f} lr {lr_now:.2e} "
                  f"grad_norm {float(gnorm) if gnorm is not None else float('nan'):.3f} "
                  f"tokens {real_tokens} ({real_tokens / el:.0f} real tok/s)", file=sys.stderr)
            if args.max_steps and steps >= args.max_steps:
                stop = True
                break
        # token-weighted mean over the epoch's steps, as the engine's TrainReport.train_loss
        epoch_losses.append(loss_sum_epoch / max(loss_tok_epoch, 1))
        if stop:
            break
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall_s = time.perf_counter() - t_start

    model.eval()
    eval_loss = None
    t_eval = time.perf_counter()
    if evals:
        tot, cnt = 0.0, 0
        with torch.no_grad():
            for b in range(0, len(evals), args.batch_size):
                ids, attn, labels, _, _ = make_batch(evals[b:b + args.batch_size], pad_id, torch)
                s, n = ce_sum(model, ids, attn, labels, torch)
                tot += float(s)
                cnt += n
        eval_loss = tot / cnt if cnt else None
    eval_s = time.perf_counter() - t_eval
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB

    out = {
        "impl": "torch+peft",
        "targets": ",".join(targets),
        "real_tokens": real_tokens,
        "padded_tokens": padded_tokens,
        "wall_s": round(wall_s, 3),
        "real_tokens_per_s": round(real_tokens / wall_s, 2) if wall_s > 0 else None,
        "peak_rss_mib": round(peak_rss_mib, 1),
        "baseline_rss_mib": round(baseline_rss_mib, 1),
        "eval_loss": eval_loss,
        "train_loss": epoch_losses[-1] if epoch_losses else None,  # last epoch's mean
        "steps": steps,
        "torch_version": torch.__version__,
        "peft_version": peft.__version__,
        # extras
        "train_loss_per_epoch": epoch_losses,
        "examples": len(train),
        "eval_examples": len(evals),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": args.device,
        "dtype": args.dtype,
        "schedule": args.schedule,
        "order": args.order,
        "init_adapter": bool(args.init_adapter),
        "trainable_params": trainable,
        "load_s": round(load_s, 3),
        "eval_s": round(eval_s, 3),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
