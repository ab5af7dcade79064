"""Adapter zips for tests/sql/adapters.sql, written with the standard library only (no torch in CI).

  python3 tests/make_adapter_zips.py OUT_DIR

peft_layout.zip : what zipping PEFT's save_pretrained folder gives (folder inside, deflated, an extra
                  file): r 2 adapters on q_proj and v_proj of every SmolLM2-135M layer, seeded values.
config_only.zip : adapter_config.json without adapter_model.safetensors.
other_base.zip  : a LoRA adapter of another base model (2 layers, width 64).
dora.zip        : a DoRA adapter (use_dora), which the engine does not serve.
bad_json.zip    : adapter_config.json that is not JSON.
"""
import json
import os
import random
import struct
import sys
import zipfile

LAYERS, HIDDEN, KV = 30, 576, 192  # SmolLM2-135M: 9 heads and 3 kv heads of 64


def config(r, alpha, targets, **extra):
    c = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
         "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": targets, "bias": "none",
         "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False, "use_dora": False}
    c.update(extra)
    return json.dumps(c, indent=2)


def safetensors(tensors):
    """tensors: {name: (shape, [floats])} -> bytes of a safetensors file (f32, little-endian)."""
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name in sorted(tensors):
        shape, values = tensors[name]
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def lora(layers, r, modules, rng):
    """modules: {module_path: (fan_in, fan_out)}"""
    out = {}
    for i in range(layers):
        for path, (fan_in, fan_out) in modules.items():
            p = f"base_model.model.model.layers.{i}.{path}"
            out[f"{p}.lora_A.weight"] = ([r, fan_in], [rng.uniform(-0.05, 0.05) for _ in range(r * fan_in)])
            out[f"{p}.lora_B.weight"] = ([fan_out, r], [rng.uniform(-0.05, 0.05) for _ in range(fan_out * r)])
    return out


def write(path, files, method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in files.items():
            z.writestr(name, data)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(7)
    smol = safetensors(lora(LAYERS, 2, {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.v_proj": (HIDDEN, KV)}, rng))
    write(f"{out}/peft_layout.zip", {
        "peft_out/README.md": "Adapter saved by PEFT.\n",
        "peft_out/adapter_config.json": config(2, 4, ["q_proj", "v_proj"]),
        "peft_out/adapter_model.safetensors": smol,
    }, zipfile.ZIP_DEFLATED)
    write(f"{out}/config_only.zip", {"adapter_config.json": config(2, 4, ["q_proj", "v_proj"])})
    tiny = safetensors(lora(2, 2, {"self_attn.q_proj": (64, 64)}, rng))
    write(f"{out}/other_base.zip", {"adapter_config.json": config(2, 4, ["q_proj"]), "adapter_model.safetensors": tiny})
    write(f"{out}/dora.zip", {"adapter_config.json": config(2, 4, ["q_proj"], use_dora=True), "adapter_model.safetensors": tiny})
    write(f"{out}/bad_json.zip", {"adapter_config.json": "{not json", "adapter_model.safetensors": tiny})


if __name__ == "__main__":
    main()
