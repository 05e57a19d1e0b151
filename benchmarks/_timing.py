"""Whole-process timing of a child command: wall seconds and CPU seconds (user + system).

On a shared machine the wall time of a run grows with everything else that runs; the CPU seconds the process
itself used grow much less, so the benchmarks print both and compare peers on both.
"""

from __future__ import annotations

import resource
import subprocess
import time
from typing import Any


def run_timed(cmd: list[str], **kwargs: Any) -> tuple[float, float]:
    """Run ``cmd`` to completion (``subprocess.run`` keywords, ``check=True``); return (wall s, CPU s)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kwargs)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu
