"""Hostile adapter archives for tests/security.sh (standard library only).

  python3 adapters.py bombs OUT_DIR
      zipbomb.zip        adapter_model.safetensors: a valid safetensors header and data (rank-8 q/v LoRA
                         of SmolLM2-135M, zeros) followed by zeros, 1.1 GiB in all, deflated to about
                         1 MB; the zip declares the true size.
      zipbomb_lying.zip  the same bytes, the entry's declared uncompressed size patched to 4 KiB in
                         both its local and its central header (the deflate stream still inflates to
                         1.1 GiB).
  python3 adapters.py variants OUT_DIR < archive.hex
      stdin: the hex of an archive from distill.export_adapter().
      rezip.zip      the same files, the safetensors re-serialized by this script (control: imports).
      nan.zip        one weight of one tensor set to NaN.
      inf.zip        one weight set to +Infinity.
      badshape.zip   one 2-D tensor declares [a, b-1] instead of [a, b], its data cut to match (a
                     consistent file whose shape does not fit the base model).
      hugeshape.zip  the last tensor declares [a, 2^28] (gigabytes) with data_offsets to match; the
                     data is not in the file.
"""
import io
import json
import math
import os
import struct
import sys
import zipfile

LAYERS, HIDDEN, KV, R = 30, 576, 192, 8  # SmolLM2-135M: 9 heads and 3 kv heads of 64
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
ITEM = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
NAN = {"F64": struct.pack("<d", math.nan), "F32": struct.pack("<f", math.nan), "F16": b"\x00\x7e", "BF16": b"\xc0\x7f"}
INF = {"F64": struct.pack("<d", math.inf), "F32": struct.pack("<f", math.inf), "F16": b"\x00\x7c", "BF16": b"\x80\x7f"}


def config():
    return json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "r": R, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False, "use_dora": False}, indent=2)


def parse_st(blob):
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    meta = header.pop("__metadata__", None)
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    tensors = [(k, header[k]["dtype"], list(header[k]["shape"]),
                data[header[k]["data_offsets"][0]:header[k]["data_offsets"][1]]) for k in order]
    return meta, tensors


def build_st(meta, tensors, patch=None):
    """tensors: [(name, dtype, shape, raw)] in data order; patch(header) may edit the header dict."""
    header = {} if meta is None else {"__metadata__": meta}
    chunks, at = [], 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(raw)]}
        chunks.append(raw)
        at += len(raw)
    if patch:
        patch(header)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)


def lora_header_zeros():
    """A rank-8 q/v adapter of SmolLM2-135M, all zeros, as (meta, tensors)."""
    tensors = []
    for i in range(LAYERS):
        for mod, out in (("q_proj", HIDDEN), ("v_proj", KV)):
            p = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            tensors.append((f"{p}.lora_A.weight", "F32", [R, HIDDEN], bytes(4 * R * HIDDEN)))
            tensors.append((f"{p}.lora_B.weight", "F32", [out, R], bytes(4 * out * R)))
    return {"format": "pt"}, tensors


def patch_declared_size(path, entry, size):
    """Sets the uncompressed size entry `entry` declares, in its local and its central header."""
    with open(path, "r+b") as f:
        raw = bytearray(f.read())
        patched = 0
        for sig, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
            i = raw.find(sig)
            while i >= 0:
                if raw[i + name_at:i + name_at + len(entry)] == entry.encode():
                    raw[i + size_at:i + size_at + 4] = struct.pack("<I", size)
                    patched += 1
                i = raw.find(sig, i + 4)
        if patched != 2:
            sys.exit(f"patched {patched} headers of {entry}, expected 2")
        f.seek(0)
        f.write(raw)


def bombs(out):
    meta, tensors = lora_header_zeros()
    head = build_st(meta, tensors)
    total = 1100 << 20
    path = os.path.join(out, "zipbomb.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(CONFIG, config())
        with z.open(WEIGHTS, "w") as f:
            f.write(head)
            left = total - len(head)
            chunk = bytes(1 << 20)
            while left > 0:
                f.write(chunk[:min(left, len(chunk))])
                left -= len(chunk)
    lying = os.path.join(out, "zipbomb_lying.zip")
    with open(path, "rb") as src, open(lying, "wb") as dst:
        dst.write(src.read())
    patch_declared_size(lying, WEIGHTS, 4096)
    print(f"zipbomb.zip {os.path.getsize(path)} bytes, inflates to {total}")


def read_archive(raw):
    files = {}
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        for info in z.infolist():
            files[info.filename] = z.read(info)
    weights = next(n for n in files if n.rsplit("/", 1)[-1] == WEIGHTS)
    return files, weights


def write_archive(path, files):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)


def variants(out):
    raw = bytes.fromhex(sys.stdin.read().strip().removeprefix("\\x"))
    files, weights = read_archive(raw)
    meta, tensors = parse_st(files[weights])

    def save(name, blob):
        write_archive(os.path.join(out, name), {**files, weights: blob})

    save("rezip.zip", build_st(meta, tensors))
    # A trained value: lora_B starts at zero, so prefer a lora_B tensor (any tensor does for the check).
    target = next((i for i, t in enumerate(tensors) if "lora_B" in t[0]), 0)
    for fname, table in (("nan.zip", NAN), ("inf.zip", INF)):
        name, dtype, shape, data = tensors[target]
        bad = table[dtype] + data[ITEM[dtype]:]
        save(fname, build_st(meta, tensors[:target] + [(name, dtype, shape, bad)] + tensors[target + 1:]))
    two_d = next(i for i, t in enumerate(tensors) if len(t[2]) == 2 and t[2][1] > 1)
    name, dtype, (a, b), data = tensors[two_d]
    cut = b"".join(data[row * b * ITEM[dtype]:(row * b + b - 1) * ITEM[dtype]] for row in range(a))
    save("badshape.zip", build_st(meta, tensors[:two_d] + [(name, dtype, [a, b - 1], cut)] + tensors[two_d + 1:]))

    last, ldtype, lshape = tensors[-1][0], tensors[-1][1], tensors[-1][2]

    def huge(header):
        start = header[last]["data_offsets"][0]
        shape = [lshape[0], 1 << 28]
        header[last]["shape"] = shape
        header[last]["data_offsets"] = [start, start + shape[0] * shape[1] * ITEM[ldtype]]

    save("hugeshape.zip", build_st(meta, tensors, patch=huge))
    print(f"variants of {len(tensors)} tensors ({tensors[target][0]} poisoned; {name} reshaped)")


if __name__ == "__main__":
    cmd, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    {"bombs": bombs, "variants": variants}[cmd](out)
