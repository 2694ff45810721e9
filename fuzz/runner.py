"""The atheris entry point the targets share (atheris is imported only when fuzzing)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_fuzzer(check: Callable[[bytes], None]) -> None:
    """Hand ``check`` to libFuzzer with the command-line flags of this process."""
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
