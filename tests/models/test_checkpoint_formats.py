"""Checkpoint namings, quantized formats and loader errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import run_model
from vllm.model_executor.model_loader import get_model
from vllm.model_executor.model_loader.safetensors_index import CheckpointError
from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec
from vllm.model_executor.models.deepseek_v4.config import ConfigError

HUB = TinyModelSpec(naming="hub")
IDS = torch.randint(0, 500, (40,), generator=torch.Generator().manual_seed(7))


def test_hub_and_save_pretrained_namings_give_identical_outputs(checkpoint_factory):
    hub_model, _ = get_model(checkpoint_factory(HUB), torch.float32, show_progress=False)
    tf_model, _ = get_model(checkpoint_factory(replace(HUB, naming="transformers")), torch.float32,
                            show_progress=False)
    assert len(hub_model.mtp) == 1 and len(tf_model.mtp) == 0  # save_pretrained drops MTP weights
    assert torch.equal(run_model(hub_model, IDS), run_model(tf_model, IDS))


def test_hub_checkpoint_tensor_names_and_dtypes(checkpoint_factory):
    path = Path(checkpoint_factory(replace(HUB, quantized=True)))
    names = {}
    for f in path.glob("*.safetensors"):
        names.update({k: v.dtype for k, v in load_file(str(f)).items()})
    assert names["embed.weight"] == torch.float32 and "head.weight" in names and "hc_head_fn" in names
    assert names["layers.1.attn.wq_a.weight"] == torch.float8_e4m3fn
    assert names["layers.1.attn.wq_a.scale"] == torch.float8_e8m0fnu
    assert names["layers.1.ffn.experts.3.w1.weight"] == torch.int8
    assert names["layers.1.ffn.experts.3.w1.scale"] == torch.float8_e8m0fnu
    assert names["layers.0.ffn.gate.tid2eid"] == torch.int64 and "layers.1.ffn.gate.bias" in names
    assert "layers.1.attn.indexer.compressor.ape" in names and "mtp.0.e_proj.scale" in names
    assert names["layers.1.attn.compressor.wkv.weight"] == torch.float32  # never quantized


@pytest.mark.parametrize("expert_dtype", ["fp4", "fp8"])
def test_quantized_checkpoint_close_to_dequantized_run(expert_dtype, checkpoint_factory):
    path = checkpoint_factory(replace(HUB, quantized=True, expert_dtype=expert_dtype))
    native, cfg = get_model(path, torch.float32, show_progress=False)
    dense, _ = get_model(path, torch.float32, dequantize=True, show_progress=False)
    assert native.layers[1].attn.wq_a.weight.dtype == torch.float8_e4m3fn
    assert dense.layers[1].attn.wq_a.weight.dtype == torch.float32
    # The weights agree exactly: native storage dequantized on the fly == dequantized at load.
    dense_params = dict(dense.named_parameters())
    checked = 0
    for name, mod in native.named_modules():
        if getattr(getattr(mod, "method", None), "fmt", "plain") != "plain":
            w = dense_params[f"{name}.weight"]
            native_w = torch.stack([mod.method.weight(mod, e) for e in range(w.shape[0])]) if w.dim() == 3 \
                else mod.method.weight(mod)
            assert torch.equal(native_w, w), name
            checked += 1
    assert checked > 20
    # End to end the native path also quantizes activations to FP8 (per token, 128-channel
    # blocks, UE8M0), which perturbs routing and indexer choices now and then: close, not equal.
    a, b = run_model(native, IDS), run_model(dense, IDS)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.97
    assert ((a - b).abs().mean() / b.abs().mean()).item() < 0.15


def _copy(path: str, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


def _edit_tensors(ckpt: Path, fn) -> None:
    for f in ckpt.glob("*.safetensors"):
        tensors = load_file(str(f))
        fn(tensors)
        save_file(tensors, str(f))
    (ckpt / "model.safetensors.index.json").unlink()


def test_missing_tensor_is_named(checkpoint_factory, tmp_path):
    ckpt = _copy(checkpoint_factory(HUB), tmp_path)
    _edit_tensors(ckpt, lambda t: t.pop("layers.2.attn.compressor.ape", None))
    with pytest.raises(CheckpointError, match=r"layers\.2\.attn\.compressor\.ape"):
        get_model(ckpt, torch.float32, show_progress=False)


def test_missing_expert_is_named(checkpoint_factory, tmp_path):
    ckpt = _copy(checkpoint_factory(HUB), tmp_path)
    _edit_tensors(ckpt, lambda t: t.pop("layers.1.ffn.experts.5.w2.weight", None))
    with pytest.raises(CheckpointError, match=r"layers\.1\.ffn\.experts\.w2\.weight \(experts \[5\]\)"):
        get_model(ckpt, torch.float32, show_progress=False)


def test_unused_tensor_is_named(checkpoint_factory, tmp_path):
    ckpt = _copy(checkpoint_factory(HUB), tmp_path)
    _edit_tensors(ckpt, lambda t: t.setdefault("layers.0.attn.bogus.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"layers\.0\.attn\.bogus\.weight"):
        get_model(ckpt, torch.float32, show_progress=False)


def test_wrong_shape_is_named(checkpoint_factory, tmp_path):
    ckpt = _copy(checkpoint_factory(HUB), tmp_path)
    _edit_tensors(ckpt, lambda t: t.update({"layers.1.attn.wkv.weight": torch.zeros(3, 3)})
                  if "layers.1.attn.wkv.weight" in t else None)
    with pytest.raises(CheckpointError, match=r"layers\.1\.attn\.wkv\.weight.*\(3, 3\)"):
        get_model(ckpt, torch.float32, show_progress=False)


@pytest.mark.parametrize("edit,match", [
    ({"model_type": "llama"}, r"`model_type` is 'llama'"),
    ({"scoring_func": "relu"}, r"`scoring_func`"),
    ({"num_key_value_heads": 2}, r"`num_key_value_heads`"),
    ({"quantization_config": {"quant_method": "awq"}}, r"quantization_config.quant_method"),
    ({"o_groups": 3}, r"`o_groups`"),
])
def test_bad_config_is_named(edit, match, checkpoint_factory, tmp_path):
    ckpt = _copy(checkpoint_factory(HUB), tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(edit)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=match):
        get_model(ckpt, torch.float32, show_progress=False)


def test_no_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v4"}))
    with pytest.raises((CheckpointError, ConfigError)):
        get_model(tmp_path, torch.float32, show_progress=False)
