"""DeepSeek V4 architecture config: one frozen dataclass read from either `config.json` form.

Two on-disk forms exist for `model_type: deepseek_v4`:
- DeepSeek's hub form: `compress_ratios` (one int per layer, plus the MTP layer), `num_hash_layers`,
  `rope_scaling` (YaRN), `qk_rope_head_dim`, `quantization_config`, `expert_dtype`.
- transformers' form: `layer_types`, `compress_rates`, `mlp_layer_types`, `rope_parameters`
  ({"main": ..., "compress": ...}), `partial_rotary_factor`.
Both normalise to `DeepseekV4Config`; every size comes from the file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SLIDING = "sliding_attention"
CSA = "compressed_sparse_attention"
HCA = "heavily_compressed_attention"
ATTENTION_TYPES = (SLIDING, CSA, HCA)


class ConfigError(ValueError):
    """A config.json value this engine cannot serve; the message names the field."""


@dataclass(frozen=True)
class RopeConfig:
    """Interleaved partial RoPE for one layer family (spec §3.5)."""

    theta: float
    """Base of the frequencies f_i = theta^(-2i/rope_dim)."""
    yarn_factor: float | None = None
    """YaRN interpolation factor; None = plain RoPE."""
    original_max_position: int = 0
    """YaRN's original context length."""
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    def inv_freq(self, rope_dim: int) -> list[float]:
        """Per-pair inverse frequencies (DeepSeek's YaRN: no attention scaling)."""
        base = [1.0 / (self.theta ** (2 * i / rope_dim)) for i in range(rope_dim // 2)]
        if self.yarn_factor is None or self.yarn_factor <= 1.0:
            return base

        def corr(n_rot: float) -> float:
            return rope_dim * math.log(self.original_max_position / (n_rot * 2 * math.pi)) / (2 * math.log(self.theta))

        low = max(math.floor(corr(self.beta_fast)), 0)
        high = min(math.ceil(corr(self.beta_slow)), rope_dim - 1)
        if high == low:
            high += 0.001
        out = []
        for i, f in enumerate(base):
            ramp = min(max((i - low) / (high - low), 0.0), 1.0)
            out.append(f / self.yarn_factor * ramp + f * (1 - ramp))
        return out


@dataclass(frozen=True)
class QuantConfig:
    """Checkpoint weight quantization (spec §4.2)."""

    weight_block: tuple[int, int] = (128, 128)
    """FP8 e4m3 weight block; scales are float8_e8m0fnu multipliers."""
    expert_dtype: str = "fp4"
    """Routed experts: 'fp4' (MXFP4: packed e2m1, e8m0 scale per 32) or 'fp8' (blocks as above)."""


@dataclass(frozen=True)
class DeepseekV4Config:
    """Normalised DeepSeek V4 hyper-parameters. Field docs name the config.json keys."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    """`num_hidden_layers`: main decoder blocks (the MTP block is extra)."""
    num_heads: int
    head_dim: int
    """Latent width: K = V = this many dims per token (512 in V4)."""
    rope_dim: int
    """`qk_rope_head_dim`: RoPE on the trailing dims of each head."""
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    sliding_window: int
    """Raw tokens each query sees, itself included."""
    layer_types: tuple[str, ...]
    """Per layer: sliding / CSA (overlapping compressor + indexer) / HCA (plain compressor)."""
    compress_ratios: tuple[int, ...]
    """Per layer compression ratio (0 for sliding-only layers)."""
    hash_layers: tuple[bool, ...]
    """Per layer: route by `tid2eid[token]` instead of top-k."""
    main_rope: RopeConfig
    compress_rope: RopeConfig
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    n_routed_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    scoring_func: str
    norm_topk_prob: bool
    routed_scaling_factor: float
    swiglu_limit: float
    hc_mult: int
    hc_sinkhorn_iters: int
    hc_eps: float
    rms_norm_eps: float
    num_nextn_predict_layers: int
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_id: tuple[int, ...]
    tie_word_embeddings: bool
    torch_dtype: str
    quant: QuantConfig | None

    @property
    def nope_dim(self) -> int:
        return self.head_dim - self.rope_dim

    @property
    def hc_mix_dim(self) -> int:
        return (2 + self.hc_mult) * self.hc_mult

    def rope_for(self, layer_type: str) -> RopeConfig:
        return self.main_rope if layer_type == SLIDING else self.compress_rope

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeepseekV4Config":
        return _parse(d)

    def replace(self, **changes: Any) -> "DeepseekV4Config":
        return dataclasses.replace(self, **changes)


_SCORING_FUNCS = ("sqrtsoftplus", "sigmoid", "softmax")


def _require(d: dict, key: str) -> Any:
    if key not in d:
        raise ConfigError(f"config.json: required field `{key}` is missing")
    return d[key]


def _check(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config.json: unsupported `{field}`: {msg}")


def _parse_layer_schedule(d: dict, n: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if d.get("layer_types") is not None:
        types = tuple(d["layer_types"][:n])
        bad = [t for t in types if t not in ATTENTION_TYPES]
        _check(not bad, "layer_types", f"{bad} not in {ATTENTION_TYPES}")
        _check(len(types) == n, "layer_types", f"{len(types)} entries for num_hidden_layers={n}")
        rates = {CSA: 4, HCA: 128, **(d.get("compress_rates") or {})}
        ratios = tuple(0 if t == SLIDING else int(rates[t]) for t in types)
    elif d.get("compress_ratios") is not None:
        ratios = tuple(int(r) for r in d["compress_ratios"][:n])
        _check(len(ratios) == n, "compress_ratios", f"{len(ratios)} entries for num_hidden_layers={n}")
        _check(all(r >= 0 for r in ratios), "compress_ratios", "ratios must be >= 0")
        # The reference overlaps windows (and runs the indexer) exactly when ratio == 4.
        types = tuple(SLIDING if r == 0 else CSA if r == 4 else HCA for r in ratios)
    else:
        raise ConfigError("config.json: need `compress_ratios` (DeepSeek form) or `layer_types` (transformers form)")
    for t, r in zip(types, ratios):
        _check(t == SLIDING or r >= 1, "compress_ratios", f"layer type {t} needs a ratio >= 1")
    return types, ratios


def _parse_hash_layers(d: dict, n: int) -> tuple[bool, ...]:
    if d.get("mlp_layer_types") is not None:
        kinds = tuple(d["mlp_layer_types"][:n])
        bad = [k for k in kinds if k not in ("hash_moe", "moe")]
        _check(not bad, "mlp_layer_types", f"{bad} not in ('hash_moe', 'moe')")
        return tuple(k == "hash_moe" for k in kinds)
    n_hash = int(d.get("num_hash_layers", 3))
    return tuple(i < n_hash for i in range(n))


def _parse_ropes(d: dict) -> tuple[RopeConfig, RopeConfig]:
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and isinstance(rp.get("main"), dict) and isinstance(rp.get("compress"), dict):
        main_d, comp_d = rp["main"], rp["compress"]
        main = _rope_from(main_d, float(main_d.get("rope_theta", d.get("rope_theta", 10000.0))), "rope_parameters.main")
        comp = _rope_from(comp_d, float(comp_d.get("rope_theta", d.get("compress_rope_theta", 160000.0))),
                          "rope_parameters.compress")
        return main, comp
    # Hub form: `rope_scaling` applies only to compressed layers (spec §3.5).
    scaling = d.get("rope_scaling") or (rp if isinstance(rp, dict) else None) or {}
    main = RopeConfig(theta=float(d.get("rope_theta", 10000.0)))
    comp = _rope_from(scaling, float(d.get("compress_rope_theta", 160000.0)), "rope_scaling")
    return main, comp


def _rope_from(p: dict, theta: float, field: str) -> RopeConfig:
    kind = p.get("rope_type", p.get("type", "default"))
    if kind == "default":
        return RopeConfig(theta=theta)
    _check(kind == "yarn", f"{field}.type", f"{kind!r}; DeepSeek V4 uses 'yarn' or plain RoPE")
    mscale = p.get("mscale")
    _check(not mscale, f"{field}.mscale", "DeepSeek V4's YaRN applies no attention scaling")
    return RopeConfig(
        theta=theta,
        yarn_factor=float(_require(p, "factor")),
        original_max_position=int(_require(p, "original_max_position_embeddings")),
        beta_fast=float(p.get("beta_fast") or 32),
        beta_slow=float(p.get("beta_slow") or 1),
    )


def _parse_quant(d: dict) -> QuantConfig | None:
    q = d.get("quantization_config")
    if not q:
        return None
    _check(q.get("quant_method") == "fp8", "quantization_config.quant_method",
           f"{q.get('quant_method')!r}; only DeepSeek's 'fp8' block format is supported")
    _check(q.get("fmt", "e4m3") == "e4m3", "quantization_config.fmt", f"{q.get('fmt')!r}; expected 'e4m3'")
    _check(q.get("scale_fmt", "ue8m0") == "ue8m0", "quantization_config.scale_fmt",
           f"{q.get('scale_fmt')!r}; expected 'ue8m0'")
    block = tuple(q.get("weight_block_size", (128, 128)))
    _check(len(block) == 2 and all(b > 0 for b in block), "quantization_config.weight_block_size", str(block))
    expert_dtype = d.get("expert_dtype", "fp4")
    _check(expert_dtype in ("fp4", "fp8"), "expert_dtype", f"{expert_dtype!r}; expected 'fp4' or 'fp8'")
    return QuantConfig(weight_block=block, expert_dtype=expert_dtype)


def _parse(d: dict[str, Any]) -> DeepseekV4Config:
    mt = d.get("model_type")
    if mt != "deepseek_v4":
        raise ConfigError(f"config.json: `model_type` is {mt!r}; this engine serves 'deepseek_v4' checkpoints")
    n = int(_require(d, "num_hidden_layers"))
    head_dim = int(_require(d, "head_dim"))
    if "qk_rope_head_dim" in d:
        rope_dim = int(d["qk_rope_head_dim"])
    else:
        rope_dim = int(round(head_dim * float(d.get("partial_rotary_factor") or 64 / 512)))
    _check(0 < rope_dim <= head_dim and rope_dim % 2 == 0, "qk_rope_head_dim", f"{rope_dim} for head_dim {head_dim}")
    _check(int(d.get("num_key_value_heads", 1)) == 1, "num_key_value_heads", "V4 shares one latent KV (must be 1)")
    _check(not d.get("attention_bias", False), "attention_bias", "V4 has no attention biases")
    _check(d.get("hidden_act", "silu") == "silu", "hidden_act", f"{d.get('hidden_act')!r}; expected 'silu'")
    _check(int(d.get("n_shared_experts", 1)) == 1, "n_shared_experts", "V4 has exactly one shared expert")
    scoring = d.get("scoring_func", "sqrtsoftplus")
    _check(scoring in _SCORING_FUNCS, "scoring_func", f"{scoring!r} not in {_SCORING_FUNCS}")
    _check(d.get("topk_method", "noaux_tc") == "noaux_tc", "topk_method", f"{d.get('topk_method')!r}")
    heads, groups = int(_require(d, "num_attention_heads")), int(_require(d, "o_groups"))
    _check(heads % groups == 0, "o_groups", f"{groups} does not divide num_attention_heads={heads}")
    types, ratios = _parse_layer_schedule(d, n)
    main_rope, comp_rope = _parse_ropes(d)
    eos = d.get("eos_token_id", 1)
    eos = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    dtype = d.get("torch_dtype") or d.get("dtype") or "bfloat16"
    k = int(_require(d, "num_experts_per_tok"))
    experts = int(_require(d, "n_routed_experts"))
    _check(0 < k <= experts, "num_experts_per_tok", f"{k} with n_routed_experts={experts}")
    return DeepseekV4Config(
        vocab_size=int(_require(d, "vocab_size")),
        hidden_size=int(_require(d, "hidden_size")),
        num_layers=n,
        num_heads=heads,
        head_dim=head_dim,
        rope_dim=rope_dim,
        q_lora_rank=int(_require(d, "q_lora_rank")),
        o_groups=groups,
        o_lora_rank=int(_require(d, "o_lora_rank")),
        sliding_window=int(d.get("sliding_window", 128)),
        layer_types=types,
        compress_ratios=ratios,
        hash_layers=_parse_hash_layers(d, n),
        main_rope=main_rope,
        compress_rope=comp_rope,
        index_n_heads=int(d.get("index_n_heads", 64)),
        index_head_dim=int(d.get("index_head_dim", 128)),
        index_topk=int(d.get("index_topk", 512)),
        n_routed_experts=experts,
        num_experts_per_tok=k,
        moe_intermediate_size=int(_require(d, "moe_intermediate_size")),
        scoring_func=scoring,
        norm_topk_prob=bool(d.get("norm_topk_prob", True)),
        routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)),
        swiglu_limit=float(d.get("swiglu_limit", 10.0)),
        hc_mult=int(d.get("hc_mult", 4)),
        hc_sinkhorn_iters=int(d.get("hc_sinkhorn_iters", 20)),
        hc_eps=float(d.get("hc_eps", 1e-6)),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        num_nextn_predict_layers=int(d.get("num_nextn_predict_layers", 0)),
        max_position_embeddings=int(d.get("max_position_embeddings", 1 << 20)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=eos,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        torch_dtype=str(dtype),
        quant=_parse_quant(d),
    )
