"""Console progress: a live rich line on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Optional


class Progress:
    """Shows policy steps, steps per second and the mean return of the recent episodes."""

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True, plain_every: float = 10.0) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.plain_every = plain_every
        self.returns: deque[float] = deque(maxlen=20)
        self._t0 = time.perf_counter()
        self._step0 = start_step
        self._last_plain = self._t0
        self._live: Optional[Any] = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._live = RichProgress(
                TextColumn("[bold]steps"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                refresh_per_second=4,
            )
            self._task = self._live.add_task("train", total=total_steps, completed=start_step, info="")
            self._live.start()

    def add_returns(self, returns: Any) -> None:
        self.returns.extend(float(r) for r in returns)

    def sps(self, step: int) -> float:
        return (step - self._step0) / max(time.perf_counter() - self._t0, 1e-9)

    def _info(self, step: int) -> str:
        ret = f"{sum(self.returns) / len(self.returns):.1f}" if self.returns else "n/a"
        return f"{self.sps(step):,.0f} SPS  return {ret}"

    def update(self, step: int) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.update(self._task, completed=min(step, self.total), info=self._info(step))
            return
        now = time.perf_counter()
        if now - self._last_plain >= self.plain_every:
            self._last_plain = now
            self.print(f"step {step}/{self.total}  {self._info(step)}")

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.console.print(line)
        else:
            print(line, flush=True)

    def close(self, step: int) -> None:
        if self._live is not None:
            self._live.update(self._task, completed=min(step, self.total), info=self._info(step))
            self._live.stop()
            self._live = None
        elif self.enabled:
            self.print(f"step {step}/{self.total}  {self._info(step)}  ({time.perf_counter() - self._t0:.1f} s)")
