"""Network blocks (MLP, NatureCNN, CNN/DeCNN, LayerNorm GRU) and observation encoders."""

from sheeprl.models.blocks import CNN, MLP, DeCNN, LayerNormGRUCell, NatureCNN, get_activation, layer_init
from sheeprl.models.encoders import CNNEncoder, MLPEncoder, MultiEncoder

__all__ = [
    "CNN",
    "MLP",
    "CNNEncoder",
    "DeCNN",
    "LayerNormGRUCell",
    "MLPEncoder",
    "MultiEncoder",
    "NatureCNN",
    "get_activation",
    "layer_init",
]
