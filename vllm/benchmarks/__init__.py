"""Offline benchmarks behind `vllm bench latency|throughput`."""
