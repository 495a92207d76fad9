"""Write a tiny random DeepSeek V4 checkpoint in the real on-disk format.

    python tools/make_tiny_checkpoint.py OUT_DIR [--layers sliding,csa,hca,csa] [--hash-layers 1]
        [--quantized [--expert-dtype fp4|fp8]] [--naming hub|transformers] [--dtype bfloat16] [--seed 0]
"""

from __future__ import annotations

import argparse

from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec, write_tiny_checkpoint
from vllm.model_executor.models.deepseek_v4.config import CSA, HCA, SLIDING

_KINDS = {"sliding": SLIDING, "csa": CSA, "hca": HCA}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--layers", default="sliding,csa,hca,csa", help=f"comma list of {sorted(_KINDS)}")
    p.add_argument("--hash-layers", type=int, default=1, help="leading hash-routed MoE layers")
    p.add_argument("--hca-ratio", type=int, default=8)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--quantized", action="store_true", help="FP8 block weights + MXFP4/FP8 experts")
    p.add_argument("--expert-dtype", default="fp4", choices=["fp4", "fp8"])
    p.add_argument("--naming", default="hub", choices=["hub", "transformers"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    layers = tuple(_KINDS[k.strip()] for k in a.layers.split(","))
    spec = TinyModelSpec(layer_types=layers, hash_layers=tuple(i < a.hash_layers for i in range(len(layers))),
                         hca_ratio=a.hca_ratio, sliding_window=a.window, quantized=a.quantized,
                         expert_dtype=a.expert_dtype, naming=a.naming, dtype=a.dtype, seed=a.seed)
    print(write_tiny_checkpoint(a.out_dir, spec))


if __name__ == "__main__":
    main()
