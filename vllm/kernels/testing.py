"""One numerics comparator for kernel tests and benchmarks."""

from __future__ import annotations

import torch


def assert_close(actual: torch.Tensor, ref: torch.Tensor, rel: float, name: str = "output",
                 cosine: float | None = None) -> float:
    """Shapes/dtypes, NaN/inf positions, ‖a−r‖/‖r‖ ≤ rel (and cosine ≥ `cosine`); names the worst
    coordinate on failure. Returns the relative error."""
    assert actual.shape == ref.shape, f"{name}: shape {tuple(actual.shape)} != reference {tuple(ref.shape)}"
    a, r = actual.double().cpu(), ref.double().cpu()
    bad = torch.isfinite(a) != torch.isfinite(r)
    assert not bad.any(), f"{name}: non-finite values differ at {bad.nonzero()[0].tolist()}"
    fin = torch.isfinite(r)
    a, r = torch.where(fin, a, 0), torch.where(fin, r, 0)
    err = (a - r).norm().item() / max(r.norm().item(), 1e-30)
    if err > rel or (cosine is not None and torch.cosine_similarity(a.flatten(), r.flatten(), 0) < cosine):
        worst = (a - r).abs().argmax()
        idx = list(torch.unravel_index(worst, a.shape)) if a.dim() else []
        raise AssertionError(f"{name}: relative error {err:.3e} > {rel:.1e}; worst at {[int(i) for i in idx]}: "
                             f"{a.flatten()[worst].item():.6g} vs reference {r.flatten()[worst].item():.6g}")
    return err
