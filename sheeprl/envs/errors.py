"""The one exception type of :mod:`sheeprl.envs`."""

from __future__ import annotations


class EnvError(ValueError):
    """A user-caused environment error (unknown id, unsupported space, missing key, ...).

    The message is one line; the CLI prints it and exits with code 2.
    """
