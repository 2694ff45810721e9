"""Benchmarks: in-repo CLIs, run as ``python -m bench.NAME`` from the repository root."""
