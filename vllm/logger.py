"""The `vllm` logger: INFO lines on stderr like vLLM's (`INFO 11-23 10:00:00 [file.py:42] msg`),
set up once on import unless the application already configured the `vllm` logger."""

from __future__ import annotations

import logging


def init_logger() -> None:
    root = logging.getLogger("vllm")
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                                           datefmt="%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
