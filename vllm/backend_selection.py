"""Declarative backend selection shared by the attention and MoE/GEMM registries: a priority list
per device type, the first backend whose `unsupported_reason(device, *facts)` is None wins, a
name overrides; the log says what was chosen and why the ones before it were skipped."""

from __future__ import annotations

import logging

import torch


def pick_backend(kind: str, registry: dict[str, type], priority: dict[str, tuple[str, ...]], device: torch.device,
                 override: str | None, facts: tuple, facts_text: str, logger: logging.Logger) -> type:
    """-> the chosen backend class. `kind` names the family in messages ("attention", "MoE/GEMM")."""
    if override is not None:
        if override not in registry:
            raise ValueError(f"unknown {kind} backend {override!r}; valid: {sorted(registry)}")
        reason = registry[override].unsupported_reason(device, *facts)
        if reason:
            raise ValueError(f"{kind} backend {override!r} cannot run on {device} ({facts_text}): {reason}")
        logger.info("Using %s backend %r (requested)", kind, override)
        return registry[override]
    skipped = []
    for name in priority.get(device.type, ("torch",)):
        reason = registry[name].unsupported_reason(device, *facts)
        if reason is None:
            logger.info("Using %s backend %r on %s%s", kind, name, device,
                        "" if not skipped else f" (skipped: {'; '.join(skipped)})")
            return registry[name]
        skipped.append(f"{name}: {reason}")
    raise RuntimeError(f"no {kind} backend supports {device}: {'; '.join(skipped)}")
