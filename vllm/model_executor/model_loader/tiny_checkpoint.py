"""Write tiny random DeepSeek V4 checkpoints in the real on-disk format (tests, the built-in model).

A checkpoint is `config.json` (DeepSeek hub form or transformers form), safetensors shards with
hub or `save_pretrained` tensor names, optionally FP8 128x128-block weights with e8m0 `.scale`
tensors and MXFP4 experts, and a byte-level BPE tokenizer carrying DeepSeek V4's special tokens.
Every parameter is randomized (sinks, biases, `ape`, `tid2eid` included) so no bug hides behind
a zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from vllm.model_executor.layers.quantization.formats import quant_fp8_block, quant_mxfp4
from vllm.model_executor.models.deepseek_v4.config import CSA, HCA, SLIDING, DeepseekV4Config
from vllm.model_executor.models.deepseek_v4.weights import hub_to_transformers_name, param_to_hub_names

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
SPECIAL_TOKENS = [
    BOS, EOS, "<｜▁pad▁｜>", "<｜User｜>", "<｜Assistant｜>", "<｜latest_reminder｜>", "｜DSML｜",
    "<｜action｜>", "<｜query｜>", "<｜authority｜>", "<｜domain｜>", "<｜title｜>", "<｜read_url｜>",
]
# Added but not special: they stay in decoded text (reasoning parsers look for them).
ADDED_TOKENS = ["<think>", "</think>"]

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A language model predicts the next token from the
ones before it. DeepSeek V4 compresses its key value cache: every few tokens become one entry,
and a lightning indexer picks which entries each query reads. Hello world! How are you today?
Once upon a time there was a small engine that served a large model on a small machine.
def add(a, b):\n    return a + b\nprint(add(2, 3))\nThe answer is 42. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.
Tools are called with a markup block; reasoning happens between think tags before the answer.
"""


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny DeepSeek V4. Defaults exercise every layer kind on a CPU in milliseconds."""

    layer_types: tuple[str, ...] = (SLIDING, CSA, HCA, CSA)
    hash_layers: tuple[bool, ...] | None = None
    """Per layer; None = the first layer only."""
    csa_ratio: int = 4
    hca_ratio: int = 8
    hidden_size: int = 64
    num_heads: int = 4
    head_dim: int = 64
    rope_dim: int = 16
    q_lora_rank: int = 32
    o_groups: int = 2
    o_lora_rank: int = 32
    sliding_window: int = 8
    index_n_heads: int = 8
    index_head_dim: int = 32
    index_topk: int = 3
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 32
    hc_mult: int = 4
    num_mtp_layers: int = 1
    yarn_factor: float = 4.0
    yarn_original_max_position: int = 1024
    max_position_embeddings: int = 4096
    quantized: bool = False
    """FP8 128x128-block dense weights with e8m0 scales and MXFP4 (or FP8) routed experts."""
    expert_dtype: str = "fp4"
    naming: str = "hub"
    """'hub' (DeepSeek's tensor names and config form) or 'transformers' (save_pretrained's)."""
    dtype: str = "float32"
    seed: int = 0


def build_tokenizer(out_dir: Path, vocab_size: int = 512) -> int:
    """Train a byte-level BPE on a fixed corpus; write tokenizer.json + tokenizer_config.json. -> size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + ADDED_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_tokens(ADDED_TOKENS)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
        "add_bos_token": False, "add_eos_token": False, "model_max_length": 1 << 20,
    }, indent=2, ensure_ascii=False))
    return tok.get_vocab_size()


def hub_config(spec: TinyModelSpec, vocab_size: int) -> dict:
    """config.json in DeepSeek's hub form."""
    ratio = {SLIDING: 0, CSA: spec.csa_ratio, HCA: spec.hca_ratio}
    if spec.csa_ratio != 4 and CSA in spec.layer_types:
        raise ValueError("the hub form marks CSA layers by ratio 4; use naming='transformers' for other CSA ratios")
    d = _common_config(spec, vocab_size)
    d.update({
        "compress_ratios": [ratio[t] for t in spec.layer_types] + [0] * spec.num_mtp_layers,
        "num_hash_layers": sum(_hash_layers(spec)),
        "qk_rope_head_dim": spec.rope_dim,
        "rope_scaling": {"type": "yarn", "factor": spec.yarn_factor, "beta_fast": 32, "beta_slow": 1,
                         "original_max_position_embeddings": spec.yarn_original_max_position},
        "topk_method": "noaux_tc",
    })
    hashes = _hash_layers(spec)
    if list(hashes) != sorted(hashes, reverse=True):
        raise ValueError("the hub form only has leading hash layers (num_hash_layers); use naming='transformers'")
    if spec.quantized:
        d["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
        d["expert_dtype"] = spec.expert_dtype
    return d


def transformers_config(spec: TinyModelSpec, vocab_size: int) -> dict:
    """config.json in transformers' form (what DeepseekV4Config.save_pretrained writes)."""
    if spec.quantized:
        raise ValueError("transformers' form carries no DeepSeek FP8 quantization_config; use naming='hub'")
    d = _common_config(spec, vocab_size)
    d.update({
        "layer_types": list(spec.layer_types),
        "compress_rates": {CSA: spec.csa_ratio, HCA: spec.hca_ratio},
        "mlp_layer_types": ["hash_moe" if h else "moe" for h in _hash_layers(spec)],
        "partial_rotary_factor": spec.rope_dim / spec.head_dim,
        "rope_parameters": {
            "main": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": spec.rope_dim / spec.head_dim},
            "compress": {"rope_type": "yarn", "rope_theta": 160000.0, "factor": spec.yarn_factor,
                         "original_max_position_embeddings": spec.yarn_original_max_position, "beta_fast": 32,
                         "beta_slow": 1, "attention_factor": 1.0,
                         "partial_rotary_factor": spec.rope_dim / spec.head_dim},
        },
    })
    return d


def _hash_layers(spec: TinyModelSpec) -> tuple[bool, ...]:
    if spec.hash_layers is not None:
        return spec.hash_layers
    return tuple(i == 0 for i in range(len(spec.layer_types)))


def _common_config(spec: TinyModelSpec, vocab_size: int) -> dict:
    return {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
        "vocab_size": vocab_size, "hidden_size": spec.hidden_size, "num_hidden_layers": len(spec.layer_types),
        "num_attention_heads": spec.num_heads, "num_key_value_heads": 1, "head_dim": spec.head_dim,
        "q_lora_rank": spec.q_lora_rank, "o_groups": spec.o_groups, "o_lora_rank": spec.o_lora_rank,
        "sliding_window": spec.sliding_window, "rope_theta": 10000.0, "compress_rope_theta": 160000.0,
        "max_position_embeddings": spec.max_position_embeddings, "index_n_heads": spec.index_n_heads,
        "index_head_dim": spec.index_head_dim, "index_topk": spec.index_topk,
        "n_routed_experts": spec.n_routed_experts, "n_shared_experts": 1,
        "num_experts_per_tok": spec.num_experts_per_tok, "moe_intermediate_size": spec.moe_intermediate_size,
        "scoring_func": "sqrtsoftplus", "norm_topk_prob": True, "routed_scaling_factor": 1.5,
        "swiglu_limit": 10.0, "hidden_act": "silu", "hc_mult": spec.hc_mult, "hc_sinkhorn_iters": 20,
        "hc_eps": 1e-6, "rms_norm_eps": 1e-6, "num_nextn_predict_layers": spec.num_mtp_layers,
        "tie_word_embeddings": False, "attention_bias": False, "bos_token_id": 0, "eos_token_id": 1,
        "torch_dtype": spec.dtype,
    }


def _owner_leaf(name: str) -> tuple[str, str]:
    """`layers.1.attn.q_norm.weight` -> ("q_norm", "weight"); a top-level `ape` -> ("", "ape")."""
    parts = name.split(".")
    return (parts[-2] if len(parts) > 1 else ""), parts[-1]


def _randomize(name: str, p: torch.Tensor, cfg: DeepseekV4Config, g: torch.Generator) -> torch.Tensor:
    """A well-scaled random value for parameter `name` (fp32, or int64 for tid2eid)."""
    shape = p.shape
    randn = lambda s=1.0: torch.randn(shape, generator=g) * s  # noqa: E731
    if name.endswith("tid2eid"):
        return torch.argsort(torch.rand(shape[0], cfg.n_routed_experts, generator=g), dim=1)[:, : shape[1]]
    owner, leaf = _owner_leaf(name)
    if owner in ("hc_attn", "hc_ffn", "hc_head"):
        return {"fn": lambda: randn(0.05), "base": lambda: randn(0.3),
                "scale": lambda: 0.5 + torch.rand(shape, generator=g)}[leaf]()
    if "norm" in owner:
        return 1.0 + randn(0.1)
    if leaf == "attn_sink":
        return randn(1.0)
    if leaf == "ape":
        return randn(0.5)
    if owner == "gate" and leaf == "bias":
        return randn(0.1)
    if owner == "embed":
        return randn(1.0)
    return randn(1.0 / math.sqrt(shape[-1]))


def random_hub_state(spec: TinyModelSpec, cfg: DeepseekV4Config) -> dict[str, torch.Tensor]:
    """Hub-named tensors of a random model (quantized when the config says so)."""
    from vllm.model_executor.models.deepseek_v4.model import DeepseekV4ForCausalLM

    g = torch.Generator().manual_seed(spec.seed)
    with torch.device("meta"):
        plain = DeepseekV4ForCausalLM(cfg.replace(quant=None), torch.float32)
        native = DeepseekV4ForCausalLM(cfg, torch.float32)
    native_params = dict(native.named_parameters())
    dtype = getattr(torch, spec.dtype)
    out: dict[str, torch.Tensor] = {}
    for name, p in plain.named_parameters():
        value = _randomize(name, p, cfg, g)
        scale_name = name[:-len("weight")] + "weight_scale" if name.endswith("weight") else None
        hub_names = param_to_hub_names(name, cfg.n_routed_experts)
        per_expert = list(value) if len(hub_names) > 1 else [value]
        scale_hub = param_to_hub_names(scale_name, cfg.n_routed_experts) if scale_name in native_params else None
        for i, (hub_name, v) in enumerate(zip(hub_names, per_expert)):
            if scale_hub is None:
                out[hub_name] = v if v.dtype == torch.int64 or _is_fp32_param(name) else v.to(dtype)
                continue
            quant = quant_fp8_block if native_params[name].dtype == torch.float8_e4m3fn else quant_mxfp4
            q, s = quant(v)
            out[hub_name], out[scale_hub[i]] = q, s.view(torch.float8_e8m0fnu)
    return out


def _is_fp32_param(name: str) -> bool:
    """Tensors DeepSeek ships in fp32 whatever the model dtype (spec §4.2)."""
    owner, leaf = _owner_leaf(name)
    return owner in ("hc_attn", "hc_ffn", "hc_head") or leaf in ("attn_sink", "ape") or (
        owner == "gate" and leaf == "bias")


def write_tiny_checkpoint(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec(), num_shards: int = 2) -> Path:
    """Create `out_dir` with config.json, sharded safetensors and tokenizer files. -> out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out_dir)
    vocab = -(-vocab // 64) * 64
    config = (hub_config if spec.naming == "hub" else transformers_config)(spec, vocab)
    cfg = DeepseekV4Config.from_dict(config)
    state = random_hub_state(spec, cfg)
    if spec.naming == "transformers":  # like save_pretrained: no MTP weights
        state = {hub_to_transformers_name(k): v for k, v in state.items() if not k.startswith("mtp.")}
    names = sorted(state)
    shards = [names[i::num_shards] for i in range(num_shards)]
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in shard}, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                     indent=1))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return out_dir
