"""Command-line flags generated from the config dataclasses (`--max-num-seqs` <- max_num_seqs)."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any


def _kind(annotation: str) -> type:
    for name, t in (("bool", bool), ("float", float), ("int", int)):
        if name in str(annotation):
            return t
    return str


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group(cls.__name__)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is MISSING else f.default
        kind = _kind(f.type)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            group.add_argument(flag, type=kind, default=default, help=f"default: {default}")


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
