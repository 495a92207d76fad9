"""Compile the sparse attention kernel for a GPU architecture on this machine (no GPU needed) and print
the compiler's resource report per launch configuration: registers, stack (spilled bytes per thread),
shared memory. Triton's wheel carries ptxas and cuobjdump, so register pressure can be studied
between device sessions; times still need the GPU.

    python tools/sparse_attn_resources.py                       # V4 shapes, the launch defaults
    python tools/sparse_attn_resources.py --arch 120 --configs '[{"fp8": true, "block_k": 32}]'
"""

from __future__ import annotations

import argparse
import inspect
import json
import os

from cubin_resources import kernel_resources  # tools/ (run as a script)

from vllm.kernels import sparse_attn as sa
from vllm.kernels.fp8_ds_mla import Fp8DsMlaLayout

HEADS, LATENT = 64, 512  # V4-Flash; fp8 pages in the default (V4) fp8_ds_mla layout


def constexprs(fp8: bool, cfg: dict) -> dict:
    return dict(D=LATENT, BLOCK_H=cfg["block_h"], BLOCK_K=cfg["block_k"], BLOCK_D=LATENT, PARTS=cfg["parts"],
                NUM_SPLITS=1, HAS_SRC1=True, IS_FP8=fp8, PRECISION="tf32",
                **sa.row_format(Fp8DsMlaLayout() if fp8 else None, LATENT))


def arg_type(name: str, fp8: bool) -> str:
    """Kernel argument types as a bf16 model's decode step passes them (int64 index lists)."""
    if not name.endswith("_ptr"):
        return "fp32" if name == "scale" else "i32"
    if name.startswith("src"):
        return "*u8" if fp8 else "*bf16"
    if name.startswith("idx"):
        return "*i64"
    return "*fp32" if name in ("sink_ptr", "part_o_ptr", "part_lse_ptr") else "*bf16"


def resources(fp8: bool, cfg: dict, arch: int) -> dict:
    names = list(inspect.signature(sa._sparse_attn_kernel.fn).parameters)
    cons = constexprs(fp8, cfg)
    return kernel_resources(sa._sparse_attn_kernel, {n: arg_type(n, fp8) for n in names if n not in cons}, cons,
                            arch, cfg["num_warps"], cfg["num_stages"], not_divisible=("scale",))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90, help="compute capability as one number (90 = Hopper)")
    ap.add_argument("--configs", default=None,
                    help="JSON list of {fp8, batch, ...launch overrides}; default: the launch defaults")
    a = ap.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    wanted = json.loads(a.configs) if a.configs else [dict(fp8=f, batch=b) for f in (True, False) for b in (1, 8, 32, 128)]
    for w in wanted:
        w = dict(w)
        fp8, batch = w.pop("fp8"), w.pop("batch", 128)
        cfg = {**sa.launch_config(batch, HEADS, fp8), **w}
        print(json.dumps({"fp8": fp8, "batch": batch, **cfg, **resources(fp8, cfg, a.arch)}), flush=True)


if __name__ == "__main__":
    main()
