"""Stand-ins for the CUDA libraries candle links against (the driver's libcuda.so.1, cuBLAS, cuBLASLt,
cuRAND, NVRTC), so that a CUDA build links on a machine that has none of them (this one; the PyPI
wheels of cuBLAS alone are ~700 MB). Each stand-in has the real library's soname and every symbol the
build calls, found with `nm -u` in cudarc's rlib; the executable then names the real libraries, which
the GPU machine loads at run time. Run here, the stand-ins say there is no device: every driver call
returns CUDA_ERROR_NO_DEVICE (100), so a CUDA build falls back to the CPU under `auto` and says why
under `cuda`, as it does on a machine with a driver and no GPU.

  python3 scripts/cuda_link_stubs.py OUT_DIR RLIB...
"""
import os
import subprocess
import sys
import tempfile

# (prefix, library, soname): the first matching prefix decides.
LIBS = [
    ("cublasLt", "cublasLt", "libcublasLt.so.13"),
    ("cublas", "cublas", "libcublas.so.13"),
    ("curand", "curand", "libcurand.so.10"),
    ("nvrtc", "nvrtc", "libnvrtc.so.13"),
    ("cu", "cuda", "libcuda.so.1"),
]
NO_DEVICE = 100
MESSAGE = "no CUDA driver: a link-time stand-in (scripts/cuda_link_stubs.py)"


def body(name):
    # The error-text functions: the driver's hand back a string through their second argument; the
    # libraries' return one.
    if name in ("cuGetErrorString", "cuGetErrorName"):
        return f'int {name}(int e, const char **s) {{ *s = "{MESSAGE}"; return 0; }}'
    if name.endswith(("GetErrorString", "GetStatusString", "GetStatusName")):
        return f'const char *{name}(void) {{ return "{MESSAGE}"; }}'
    return f"int {name}(void) {{ return {NO_DEVICE}; }}"


def main():
    out, rlibs = sys.argv[1], sys.argv[2:]
    symbols = set()
    for rlib in rlibs:
        nm = subprocess.run(["nm", "-u", rlib], capture_output=True, text=True, check=True).stdout
        for line in nm.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[-2] == "U":
                name = parts[-1].split("@")[0]
                if name.startswith(("cu", "nvrtc")) and not name.startswith(("cudaMalloc", "cudart")):
                    symbols.add(name)
    if not any(s.startswith("cuInit") for s in symbols):
        sys.exit(f"no CUDA driver symbols found in {rlibs}")
    os.makedirs(out, exist_ok=True)
    for prefix, lib, soname in LIBS:
        mine = sorted(s for s in symbols if s.startswith(prefix))
        symbols -= set(mine)
        src = os.path.join(tempfile.mkdtemp(), f"{lib}.c")
        with open(src, "w") as f:
            f.write("\n".join(body(s) for s in mine) + "\n")
        so = os.path.join(out, f"lib{lib}.so")
        subprocess.run(["gcc", "-shared", "-fPIC", "-w", "-o", so, src, f"-Wl,-soname,{soname}"], check=True)
        link = os.path.join(out, soname)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(f"lib{lib}.so", link)
        print(f"{soname}: {len(mine)} symbols", file=sys.stderr)


if __name__ == "__main__":
    main()
