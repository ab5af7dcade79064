#!/usr/bin/env python3
"""Build a Hugging Face LlamaForCausalLM from a llama.cpp GGUF file.

The GGUF is dequantized to float32 with the `gguf` package (gguf.GGUFReader +
gguf.quants.dequantize); llama.cpp's interleaved-RoPE row permutation of the
q/k projections is undone so that the weights match Hugging Face's
rotate-half RoPE convention.

    python bench/hf_from_gguf.py --check [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]

greedy-decodes a fixed ChatML prompt and compares it with the continuation
llama.cpp produces from the same Q4_1 weights.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

DEFAULT_GGUF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models",
                            "SmolLM2-135M-Instruct.Q4_1.gguf")

CHECK_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nClassify this support ticket into one of: Roaming fees, Slow data speed, "
    "Lost phone, Add new line, Closing account. Reply with the category only.\n"
    "Ticket: I was charged extra while travelling in Spain last week.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# Greedy continuation of llama.cpp on the Q4_1 weights.
CHECK_EXPECTED = 'The support ticket is a classic example of a "Closing account" issue.'
CHECK_EXPECTED_PREFIX = 'The support ticket is a classic example of a "'


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf.py `permute`.

    permute(): HF rows reshaped (n_head, 2, hd/2, in) -> swapaxes(1, 2).
    Inverse:   GGUF rows reshaped (n_head, hd/2, 2, in) -> swapaxes(1, 2).
    """
    out_dim, in_dim = w.shape
    hd = out_dim // n_head
    return (w.reshape(n_head, hd // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim))


def read_gguf_config(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported architecture {arch!r} (only llama)")
    p = "llama."
    hidden = int(_field(reader, p + "embedding_length"))
    n_head = int(_field(reader, p + "attention.head_count"))
    n_kv = int(_field(reader, p + "attention.head_count_kv", n_head))
    head_dim = int(_field(reader, p + "rope.dimension_count", hidden // n_head))
    tok_embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab = int(_field(reader, p + "vocab_size", int(tok_embd.shape[-1])))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, p + "feed_forward_length")),
        "num_hidden_layers": int(_field(reader, p + "block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": int(_field(reader, p + "context_length", 2048)),
        "rms_norm_eps": float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, p + "rope.freq_base", 10000.0)),
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id", 2)),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id", 2)),
        "tie_word_embeddings": not has_output,
    }


def load_llama_from_gguf(path, dtype=torch.float32):
    """Returns (LlamaForCausalLM in eval mode, config dict)."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    reader = gguf.GGUFReader(path)
    cfg = read_gguf_config(reader)
    if not cfg["tie_word_embeddings"]:
        raise ValueError("GGUF has output.weight; this loader expects tied embeddings")
    hf_cfg = LlamaConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"],
        hidden_act="silu",
        max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]},
        bos_token_id=cfg["bos_token_id"],
        eos_token_id=cfg["eos_token_id"],
        pad_token_id=cfg["pad_token_id"],
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
    )
    # Build on the meta device (no random init), then assign real tensors.
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_cfg)

    name_map = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    }
    state = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        # numpy shape is the reverse of GGUF's ne[] order: (rows=out, cols=in)
        expect = tuple(int(d) for d in reversed(t.shape.tolist()))
        if w.shape != expect:
            w = w.reshape(expect)
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            key = "model.norm.weight"
        elif parts[0] == "blk" and parts[3] == "weight" and parts[2] in name_map:
            layer, kind = int(parts[1]), parts[2]
            if kind == "attn_q":
                w = unpermute_rope_rows(w, cfg["num_attention_heads"])
            elif kind == "attn_k":
                w = unpermute_rope_rows(w, cfg["num_key_value_heads"])
            key = f"model.layers.{layer}.{name_map[kind]}.weight"
        else:
            raise ValueError(f"unexpected GGUF tensor {t.name}")
        if not (w.flags.writeable and w.flags.c_contiguous):
            w = np.array(w, dtype=np.float32, order="C", copy=True)
        state[key] = torch.from_numpy(w).to(dtype)

    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    # Non-persistent buffers (rotary inv_freq) were created on meta: rebuild them.
    for mod in model.modules():
        if mod.__class__.__name__.endswith("RotaryEmbedding"):
            fresh = mod.__class__(config=hf_cfg)  # outside the meta context: on CPU
            for bname, buf in fresh.named_buffers(recurse=False):
                setattr(mod, bname, buf)
            for aname in ("original_inv_freq",):
                if hasattr(fresh, aname):
                    setattr(mod, aname, getattr(fresh, aname))
    for n, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_meta:
            raise ValueError(f"{n} still on meta device")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), \
        "lm_head not tied"
    model.eval()
    return model, cfg


def load_tokenizer(gguf_path):
    """transformers' own GGUF tokenizer conversion (works offline)."""
    from transformers import AutoTokenizer
    d, name = os.path.split(os.path.abspath(gguf_path))
    return AutoTokenizer.from_pretrained(d, gguf_file=name)


def _check(args):
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, cfg = load_llama_from_gguf(args.gguf)
    print(f"loaded in {time.time() - t0:.1f}s: {cfg}", file=sys.stderr)
    tok = load_tokenizer(args.gguf)
    ids = tok(CHECK_PROMPT, add_special_tokens=False)["input_ids"]
    print(f"prompt tokens: {len(ids)}")
    print(f"prompt ids: {ids}")
    inp = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=args.max_new_tokens,
                             do_sample=False, eos_token_id=cfg["eos_token_id"],
                             pad_token_id=cfg["pad_token_id"])
    new = out[0, len(ids):].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    exp_ids = tok(CHECK_EXPECTED, add_special_tokens=False)["input_ids"]
    n_match = 0
    for a, b in zip(new, exp_ids):
        if a != b:
            break
        n_match += 1
    print(f"generated ids: {new}")
    print(f"generated text: {text!r}")
    print(f"expected (llama.cpp Q4_1): {CHECK_EXPECTED!r}")
    print(f"first {n_match}/{len(exp_ids)} tokens match llama.cpp")
    ok = text.startswith(CHECK_EXPECTED_PREFIX)
    print("CHECK " + ("OK" if ok else "FAILED") + f": prefix {CHECK_EXPECTED_PREFIX!r}")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--check", action="store_true", help="greedy-decode the fixed prompt and compare")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.check:
        sys.exit(_check(args))
    model, cfg = load_llama_from_gguf(args.gguf)
    print(cfg)
    print(sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main()
