"""Prometheus text exposition of the engine's `vllm:` metrics (no client library needed)."""

from __future__ import annotations

from vllm.engine.async_llm import AsyncLLM

_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
            80.0, 160.0)


def _histogram(name: str, help_: str, samples: list[float], labels: str) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    for b in _BUCKETS:
        lines.append(f'{name}_bucket{{{labels},le="{b}"}} {sum(1 for s in samples if s <= b)}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {len(samples)}')
    lines.append(f"{name}_sum{{{labels}}} {sum(samples)}")
    lines.append(f"{name}_count{{{labels}}} {len(samples)}")
    return lines


def render_metrics(llm: AsyncLLM, model_name: str) -> str:
    labels = f'model_name="{model_name}"'
    running, waiting, usage = llm.queue_state()
    s = llm.stats
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{labels}}} {running}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{{{labels}}} {waiting}",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge", f"vllm:kv_cache_usage_perc{{{labels}}} {usage}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter", f"vllm:prompt_tokens_total{{{labels}}} {s.prompt_tokens}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter", f"vllm:generation_tokens_total{{{labels}}} {s.generation_tokens}",
        "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
        "# TYPE vllm:prefix_cache_queries_total counter",
        f"vllm:prefix_cache_queries_total{{{labels}}} {llm.engine.kv_cache_manager.prefix_queries}",
        "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.",
        "# TYPE vllm:prefix_cache_hits_total counter",
        f"vllm:prefix_cache_hits_total{{{labels}}} {llm.engine.kv_cache_manager.prefix_hits}",
        "# HELP vllm:request_success_total Count of finished requests by finish reason.",
        "# TYPE vllm:request_success_total counter",
    ]
    lines += [f'vllm:request_success_total{{{labels},finished_reason="{r}"}} {n}' for r, n in sorted(s.finished.items())]
    lines += _histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", s.ttft,
                        labels)
    lines += _histogram("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", s.tpot,
                        labels)
    lines += _histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                        s.e2e, labels)
    return "\n".join(lines) + "\n"
