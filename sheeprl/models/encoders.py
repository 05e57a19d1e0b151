"""Encoders from a dict of observations to one feature vector.

``algo.cnn_keys.encoder`` keys go to a :class:`CNNEncoder`, ``algo.mlp_keys.encoder`` keys to an
:class:`MLPEncoder`; :class:`MultiEncoder` concatenates their features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sheeprl.models.blocks import MLP, ActivationLike, MinAtarCNN, NatureCNN

__all__ = ["CNN_KINDS", "CNNEncoder", "MLPEncoder", "MultiEncoder", "cnn_kind"]


def _check_keys(keys: Sequence[str], sizes: Sequence[int], what: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if isinstance(keys, str):
        keys = (keys,)
    keys, sizes = tuple(keys), tuple(int(s) for s in sizes)
    if not keys:
        raise ValueError(f"an encoder needs at least one key ({what})")
    if len(keys) != len(sizes):
        raise ValueError(f"got {len(keys)} keys but {len(sizes)} {what}")
    return keys, sizes


class MLPEncoder(nn.Module):
    """Concatenate the vector observations ``keys`` (last dim) and run an :class:`MLP` over them.

    With empty ``hidden_sizes`` it is the identity on the concatenation. Inputs ``(*, input_dims[i])``,
    output ``(*, output_dim)``.
    """

    def __init__(
        self,
        keys: Sequence[str],
        input_dims: Sequence[int],
        hidden_sizes: Sequence[int],
        activation: ActivationLike = "tanh",
        layer_norm: bool = False,
        ortho_init: bool = False,
    ) -> None:
        super().__init__()
        self.keys, self.input_dims = _check_keys(keys, input_dims, "input_dims")
        self.input_dim = sum(self.input_dims)
        self.model = MLP(
            self.input_dim, None, hidden_sizes, activation=activation, layer_norm=layer_norm, ortho_init=ortho_init
        )
        self.output_dim = self.model.output_dim

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([obs[k] for k in self.keys], dim=-1) if len(self.keys) > 1 else obs[self.keys[0]]
        # Env observations are often float64 (numpy) or integer; the weights decide the dtype.
        dtype = self.model[0].weight.dtype if len(self.model) else torch.get_default_dtype()
        if x.dtype != dtype:
            x = x.to(dtype)
        return self.model(x)


CNN_KINDS = ("auto", "nature", "minatar")


def cnn_kind(kind: str, screen_size: int) -> str:
    """Resolve ``auto``: NatureCNN needs at least 36x36 pixels; smaller images (MinAtar's 10x10) get MinAtarCNN."""
    if kind not in CNN_KINDS:
        raise ValueError(f"unknown CNN encoder {kind!r}; choose one of {list(CNN_KINDS)}")
    if kind == "auto":
        return "nature" if screen_size >= 36 else "minatar"
    return kind


class CNNEncoder(nn.Module):
    """Concatenate the image observations ``keys`` along channels and run a :class:`NatureCNN` or :class:`MinAtarCNN`.

    Images are ``(*, C_i, screen_size, screen_size)``, all of one dtype: uint8 (scaled to [0, 1] inside), bool
    planes (0/1) or float. ``kind`` is ``nature``, ``minatar`` or ``auto`` (by ``screen_size``, see :func:`cnn_kind`).
    Output ``(*, features_dim)``.
    """

    def __init__(
        self,
        keys: Sequence[str],
        in_channels: Sequence[int],
        screen_size: int = 64,
        features_dim: int = 512,
        kind: str = "auto",
    ) -> None:
        super().__init__()
        self.keys, self.in_channels = _check_keys(keys, in_channels, "in_channels")
        self.kind = cnn_kind(kind, screen_size)
        net = NatureCNN if self.kind == "nature" else MinAtarCNN
        self.model = net(sum(self.in_channels), features_dim=features_dim, screen_size=screen_size)
        self.output_dim = self.model.output_dim

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        images = [obs[k] for k in self.keys]
        if len({img.dtype for img in images}) > 1:
            # Concatenating uint8 with float would silently promote and skip the uint8 scaling.
            raise ValueError(f"image keys {self.keys} have different dtypes {[img.dtype for img in images]}")
        x = torch.cat(images, dim=-3) if len(images) > 1 else images[0]
        return self.model(x)


class MultiEncoder(nn.Module):
    """Run the CNN and/or MLP encoder on an observation dict and concatenate their features (last dim).

    Inputs may carry any leading dims (e.g. ``(T, B, ...)``); the output is ``(*lead, output_dim)``.
    """

    def __init__(self, cnn_encoder: CNNEncoder | None, mlp_encoder: MLPEncoder | None) -> None:
        super().__init__()
        if cnn_encoder is None and mlp_encoder is None:
            raise ValueError("MultiEncoder needs a CNN encoder, an MLP encoder, or both")
        self.cnn_encoder = cnn_encoder
        self.mlp_encoder = mlp_encoder
        self.cnn_output_dim = cnn_encoder.output_dim if cnn_encoder is not None else 0
        self.mlp_output_dim = mlp_encoder.output_dim if mlp_encoder is not None else 0
        self.output_dim = self.cnn_output_dim + self.mlp_output_dim

    @property
    def keys(self) -> tuple[str, ...]:
        """Every observation key the encoder reads (CNN keys first)."""
        cnn = self.cnn_encoder.keys if self.cnn_encoder is not None else ()
        mlp = self.mlp_encoder.keys if self.mlp_encoder is not None else ()
        return cnn + mlp

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # Each block flattens and restores leading dims itself, so the two outputs share them.
        features = []
        if self.cnn_encoder is not None:
            features.append(self.cnn_encoder(obs))
        if self.mlp_encoder is not None:
            features.append(self.mlp_encoder(obs))
        return torch.cat(features, dim=-1) if len(features) > 1 else features[0]
