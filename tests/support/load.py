"""Adversity for correctness tests: a CPU hog that competes with the gateway for the machine's cores."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cpu_hog"]

_SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


@contextmanager
def cpu_hog(processes: int = 1, *, seconds: float = 120.0) -> Iterator[None]:
    """Busy-loop ``processes`` Python processes while the block runs (each stops by itself after ``seconds``)."""
    hogs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(seconds=seconds)]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
