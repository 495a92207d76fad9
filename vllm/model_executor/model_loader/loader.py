"""Load a DeepSeek V4 safetensors checkpoint into the model with strict accounting.

Every checkpoint tensor must land in a parameter and every parameter (each expert slice of a
stacked expert parameter) must be set, or loading fails naming them. Quantized tensors are
copied byte-exact into quantized parameters, or dequantized here when the model was built
with plain weights (`dequantize=True`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from vllm.model_executor.layers.linear import copy_checked
from vllm.model_executor.layers.quantization.formats import dequant_fp8_block, dequant_mxfp4
from vllm.model_executor.model_loader.safetensors_index import CheckpointError, tensor_index
from vllm.model_executor.models.deepseek_v4.weights import to_hub_name, to_param_name

logger = logging.getLogger("vllm.loader")


def _dequantize(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    if weight.dtype == torch.float8_e4m3fn:
        return dequant_fp8_block(weight, scale, block)
    if weight.dtype in (torch.int8, torch.uint8):
        return dequant_mxfp4(weight, scale)
    raise CheckpointError(f"cannot dequantize a {weight.dtype} weight that has a .scale sibling")


def _drop_absent_mtp(model: nn.Module, hub_names: set[str]) -> None:
    """MTP weights are optional (transformers' save_pretrained drops them): no `mtp.*` -> no MTP block."""
    if len(getattr(model, "mtp", [])) and not any(n.startswith("mtp.") for n in hub_names):
        logger.info("checkpoint has no mtp.* tensors: the MTP block is not loaded")
        model.mtp = nn.ModuleList()


def load_weights(model: nn.Module, model_dir: str | Path, dequantize: bool = False,
                 block: tuple[int, int] = (128, 128), show_progress: bool = True) -> None:
    index = tensor_index(model_dir)
    hub = {to_hub_name(n): n for n in index}
    _drop_absent_mtp(model, set(hub))
    params = dict(model.named_parameters())
    expert_params = {n for n in params if ".experts." in n}
    loaded: dict[str, set] = defaultdict(set)
    unused: list[str] = []
    by_file: dict[Path, list[str]] = defaultdict(list)
    for hub_name, raw in hub.items():
        by_file[index[raw]].append(hub_name)
    bar = tqdm(total=len(hub), desc="Loading safetensors checkpoint", unit="tensor", disable=not show_progress)
    for path, names in sorted(by_file.items()):
        with safe_open(str(path), "pt") as f:
            for hub_name in names:
                bar.update(1)
                if dequantize and hub_name.endswith(".scale") and hub_name[:-6] + ".weight" in hub:
                    continue  # consumed with its weight
                param_name, expert = to_param_name(hub_name)
                if param_name not in params:
                    unused.append(hub[hub_name])
                    continue
                tensor = f.get_tensor(hub[hub_name])
                scale_name = hub_name[:-7] + ".scale" if hub_name.endswith(".weight") else None
                if dequantize and scale_name in hub:
                    with safe_open(str(index[hub[scale_name]]), "pt") as sf:
                        tensor = _dequantize(tensor, sf.get_tensor(hub[scale_name]), block)
                param = params[param_name]
                loader = getattr(param, "weight_loader", None)
                try:
                    if expert is not None:
                        loader(param, tensor, hub[hub_name], expert)
                    elif loader is not None:
                        loader(param, tensor, hub[hub_name])
                    else:
                        copy_checked(param, tensor, hub[hub_name])
                except (ValueError, RuntimeError, IndexError) as e:
                    raise CheckpointError(f"{model_dir}: tensor {hub[hub_name]!r}: {e}") from e
                loaded[param_name].add(expert)
    bar.close()
    _account(params, expert_params, loaded, unused, model, model_dir)


def _account(params, expert_params, loaded, unused, model, model_dir) -> None:
    num_experts = getattr(getattr(model, "config", None), "n_routed_experts", 0)
    missing = []
    for name in params:
        if name not in loaded:
            missing.append(name)
        elif name in expert_params and len(loaded[name]) != num_experts:
            absent = sorted(set(range(num_experts)) - loaded[name])
            missing.append(f"{name} (experts {absent[:8]})")
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameters not in the checkpoint: {missing[:10]}")
    if unused:
        problems.append(f"{len(unused)} checkpoint tensors match no parameter: {sorted(unused)[:10]}")
    if problems:
        raise CheckpointError(f"{model_dir}: " + "; ".join(problems)
                              + ". Is config.json the one this checkpoint was written with?")
