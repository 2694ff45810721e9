"""Smoke tests of the benchmarks (short runs against real processes)."""
