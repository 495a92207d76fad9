"""Helpers for streaming text parsers: how much of a buffer may be emitted before a marker."""

from __future__ import annotations


def partial_marker_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers` (it
    must be held back: the next delta may complete the marker)."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best
