"""Replay ratio: how many gradient steps to take for the policy steps just played.

``Ratio(0.5)`` returns 0, 1, 0, 1, ... for one policy step at a time and 2 for four at once: the fraction
that is left over is carried to the next call, so the number of gradient steps per policy step is the same
at any number of envs and ranks. Its state goes into checkpoints so that a resumed run keeps the rhythm.
"""

from __future__ import annotations

import math


class Ratio:
    """Accumulates ``replay_ratio * policy_steps`` and hands out its integer part."""

    def __init__(self, replay_ratio: float) -> None:
        if replay_ratio <= 0:
            raise ValueError(f"replay_ratio must be positive, got {replay_ratio}")
        self.replay_ratio = float(replay_ratio)
        self._carry = 0.0

    def __call__(self, policy_steps: int) -> int:
        """Gradient steps due for ``policy_steps`` new policy steps."""
        self._carry += self.replay_ratio * policy_steps
        # A tiny epsilon keeps 0.1 * 10 from becoming 0.9999999 and skipping a step.
        steps = math.floor(self._carry + 1e-9)
        self._carry -= steps
        return steps

    def state_dict(self) -> dict[str, float]:
        return {"replay_ratio": self.replay_ratio, "carry": self._carry}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._carry = float(state["carry"])
