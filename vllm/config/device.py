"""DeviceConfig: where the model runs and which kernel backends it uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    attention_backend: str | None = None
    """Force an attention backend by name (None = the platform's priority list)."""
    moe_backend: str | None = None
    """Force a MoE/GEMM backend (linears, router, MoE, mHC) by name (None = the platform's priority list)."""
    fuse_shared_experts: bool = True
    """Run the shared expert inside the routed-expert launches as one more expert (weight 1); off
    runs it as its own linears (for comparison)."""

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but CUDA is not available; use device='cpu'")
        return dev
