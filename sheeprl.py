"""Entry point: ``python sheeprl.py <algorithm> [--flag value ...] [key=value ...]``."""

from sheeprl.cli import script

if __name__ == "__main__":
    script()
