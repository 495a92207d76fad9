"""`vllm bench latency|throughput` run end to end on a tiny model and write their JSON."""

from __future__ import annotations

import json

from vllm.entrypoints.cli import main
from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec


def test_bench_latency_and_throughput(checkpoint_factory, tmp_path, capsys):
    model = checkpoint_factory(TinyModelSpec(naming="hub"))
    lat, thr = tmp_path / "lat.json", tmp_path / "thr.json"
    assert main(["bench", "latency", "--model", model, "--batch-size", "2", "--input-len", "6", "--output-len", "3",
                 "--num-iters-warmup", "0", "--num-iters", "2", "--output-json", str(lat)]) == 0
    assert main(["bench", "throughput", "--model", model, "--num-prompts", "3", "--input-len", "6",
                 "--output-len", "4", "--output-json", str(thr)]) == 0
    out = capsys.readouterr().out
    assert "Avg latency:" in out and "Throughput:" in out
    lat_r, thr_r = json.loads(lat.read_text()), json.loads(thr.read_text())
    assert len(lat_r["latencies"]) == 2 and lat_r["avg_latency"] > 0
    assert thr_r["num_requests"] == 3 and thr_r["total_num_tokens"] == 3 * (6 + 4)


def test_generate_cli(checkpoint_factory, capsys):
    model = checkpoint_factory(TinyModelSpec(naming="hub"))
    assert main(["generate", model, "--prompt", "Hello", "--max-tokens", "3", "--dtype", "float32"]) == 0
    assert "Output:" in capsys.readouterr().out
    assert main(["generate", model, "--prompt", "Hello", "--temperature", "-1"]) == 2
