"""Network blocks (MLP, NatureCNN, CNN/DeCNN, LayerNorm GRU) and observation encoders."""

from sheeprl.models.blocks import (
    CNN,
    MLP,
    DeCNN,
    LayerNormGRUCell,
    MinAtarCNN,
    NatureCNN,
    get_activation,
    layer_init,
    pixels_to_float,
)
from sheeprl.models.encoders import CNNEncoder, MLPEncoder, MultiEncoder

__all__ = [
    "CNN",
    "MLP",
    "CNNEncoder",
    "DeCNN",
    "LayerNormGRUCell",
    "MLPEncoder",
    "MinAtarCNN",
    "MultiEncoder",
    "NatureCNN",
    "get_activation",
    "layer_init",
    "pixels_to_float",
]
