"""Schedules of a scalar over policy steps (exploration epsilon, PER's beta, ...)."""

from __future__ import annotations


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """``start`` at step 0, moving linearly to ``end`` at ``duration``, ``end`` afterwards."""
    if duration <= 0:
        return end
    frac = min(1.0, max(0.0, step / duration))
    return start + (end - start) * frac
