"""Checkpoint tensor names -> DeepSeek V4 parameter names: declarative rename tables.

Two namings reach us: DeepSeek's hub names (`layers.3.attn.wq_a.weight`, `.scale` siblings,
`hc_head_fn`, per-expert `experts.7.w1.weight`, `mtp.0.*`) and what transformers'
`save_pretrained` writes (`model.` prefix, `model.embed_tokens`, `model.hc_head.hc_fn`,
`attn.norm` for the kv norm). Names are first normalised to hub names, then mapped to params.
"""

from __future__ import annotations

import re

# transformers save_pretrained naming -> hub naming (applied in order).
TRANSFORMERS_TO_HUB: list[tuple[str, str]] = [
    (r"^model\.", ""),
    (r"^embed_tokens\.", "embed."),
    (r"^lm_head\.", "head."),
    (r"^hc_head\.hc_(fn|base|scale)$", r"hc_head_\1"),
    (r"\.attn\.norm\.weight$", ".attn.kv_norm.weight"),
]

# hub naming -> our parameter names (applied in order); expert ids are split off separately.
HUB_TO_PARAM: list[tuple[str, str]] = [
    (r"\.scale$", ".weight_scale"),  # before the hc rules, which create `.scale` params
    (r"(^|\.)hc_(attn|ffn)_(fn|base|scale)$", r"\1hc_\2.\3"),
    (r"(^|\.)hc_head_(fn|base|scale)$", r"\1hc_head.\2"),
]

_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(w[123])\.(weight|scale)$")


def to_hub_name(name: str) -> str:
    """Either naming -> hub naming (hub names pass through unchanged)."""
    if name.startswith("model.") or name.startswith("lm_head."):
        for pat, rep in TRANSFORMERS_TO_HUB:
            name = re.sub(pat, rep, name)
    return name


def to_param_name(hub_name: str) -> tuple[str, int | None]:
    """Hub name -> (parameter name, expert id or None)."""
    m = _EXPERT.match(hub_name)
    if m:
        prefix, expert, proj, kind = m.groups()
        return f"{prefix}.{proj}.{'weight' if kind == 'weight' else 'weight_scale'}", int(expert)
    for pat, rep in HUB_TO_PARAM:
        hub_name = re.sub(pat, rep, hub_name)
    return hub_name, None


def param_to_hub_names(param_name: str, num_experts: int) -> list[str]:
    """Inverse of `to_param_name` (used by the checkpoint writer): param -> its hub tensor names."""
    m = re.match(r"^(.*\.experts)\.(w[123])\.(weight|weight_scale)$", param_name)
    if m:
        prefix, proj, kind = m.groups()
        suffix = "weight" if kind == "weight" else "scale"
        return [f"{prefix}.{e}.{proj}.{suffix}" for e in range(num_experts)]
    name = re.sub(r"(^|\.)hc_(attn|ffn)\.(fn|base|scale)$", r"\1hc_\2_\3", param_name)
    name = re.sub(r"(^|\.)hc_head\.(fn|base|scale)$", r"\1hc_head_\2", name)
    name = re.sub(r"\.weight_scale$", ".scale", name)
    return [name]


def hub_to_transformers_name(hub_name: str) -> str:
    """Hub name -> the name transformers' save_pretrained writes for it."""
    if hub_name.startswith("head."):
        return hub_name
    name = re.sub(r"^embed\.", "embed_tokens.", hub_name)
    name = re.sub(r"^hc_head_(fn|base|scale)$", r"hc_head.hc_\1", name)
    name = re.sub(r"\.attn\.kv_norm\.weight$", ".attn.norm.weight", name)
    return "model." + name
