"""Entry point: ``python sheeprl.py <algorithm> [--flag value ...] [key=value ...]``."""

import sys

from sheeprl.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli())
