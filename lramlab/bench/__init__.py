"""Benchmarks: `lramlab bench latency` (lramlab.bench.latency)."""
