"""The kernel benchmarks' timer (`benchmarks/kernels/common.bench`) on a CUDA GPU. Skips without CUDA."""

from __future__ import annotations

import pytest
import torch

from benchmarks.kernels.common import bench

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("graph", [True, False])
def test_bench_sees_work_queued_before_it(graph):
    """Inputs still being written on the current stream when `bench` is called are complete before the timed
    function first reads them (the graph timer runs it on a stream of its own)."""
    x = torch.zeros(1 << 20, device="cuda")
    torch.cuda._sleep(200_000_000)  # keeps the current stream busy for tens of ms
    x.fill_(1.0)  # queued behind the sleep
    first = torch.full_like(x, -1.0)
    calls = []

    def fn():
        if not calls:
            first.copy_(x)  # what the first (eager) call reads
        calls.append(1)
        x.mul_(1.0)

    bench(fn, graph=graph)
    assert first.min().item() == 1.0 and first.max().item() == 1.0
