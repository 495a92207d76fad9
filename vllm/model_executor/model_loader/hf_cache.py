"""Find a Hugging Face model id in the local HF cache (no network): `org/name` ->
`$HF_HOME/hub/models--org--name/snapshots/<rev>` (refs/main, else the newest snapshot)."""

from __future__ import annotations

import os
from pathlib import Path


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def find_in_hf_cache(model_id: str) -> str:
    repo = hf_hub_cache() / ("models--" + model_id.replace("/", "--"))
    snaps = repo / "snapshots"
    if snaps.is_dir():
        ref = repo / "refs" / "main"
        if ref.is_file() and (snaps / ref.read_text().strip()).is_dir():
            return str(snaps / ref.read_text().strip())
        found = sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime)
        if found:
            return str(found[-1])
    raise ValueError(f"model {model_id!r} is neither a directory nor in the local Hugging Face cache ({repo}); "
                     f"this machine does not download: pass a checkpoint directory")
