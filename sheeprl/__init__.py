"""sheeprl: readable, fast, distributed deep reinforcement learning on PyTorch and Lightning Fabric."""

__version__ = "0.1.0"
