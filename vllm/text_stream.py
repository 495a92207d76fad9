"""Helpers for streaming text parsers: how much of a buffer may be emitted before a marker."""

from __future__ import annotations


def emittable_prefix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the prefix of `text` that is safe to emit: what is held back is the longest
    suffix that is a proper prefix of a marker (the next delta may complete it) and the newlines
    before it (they may be the blank line that precedes a DSML tool block)."""
    held = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), held, -1):
            if text.endswith(m[:k]):
                held = k
                break
    return len(text[:len(text) - held].rstrip("\n"))
