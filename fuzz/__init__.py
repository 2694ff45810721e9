"""Fuzz targets for Linkd's sans-I/O cores (atheris), importable without atheris.

Each ``fuzz_*.py`` module exposes a pure ``check_*(data: bytes) -> None`` function that
raises on an invariant violation; atheris is imported only when the module runs as a
script, so ``tests/fuzz`` replays the same logic under pytest and hypothesis.
"""
