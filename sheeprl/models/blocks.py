"""Network building blocks shared by the algorithms: MLP, convolutional stacks and a layer-norm GRU cell.

Every block accepts extra leading dimensions (e.g. ``(T, B, ...)``), so sequence models need no reshaping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from sheeprl.models.gemm import Linear

__all__ = [
    "CNN",
    "MLP",
    "DeCNN",
    "LayerNormGRUCell",
    "MinAtarCNN",
    "NatureCNN",
    "get_activation",
    "layer_init",
    "pixels_to_float",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}

ActivationLike = str | type[nn.Module]


def get_activation(name: ActivationLike) -> type[nn.Module]:
    """The activation class for ``name`` (case-insensitive); an ``nn.Module`` class is returned as is."""
    if isinstance(name, type) and issubclass(name, nn.Module):
        return name
    try:
        return _ACTIVATIONS[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    """Orthogonal weight init with gain ``std`` and constant bias, in place; returns ``layer``."""
    nn.init.orthogonal_(layer.weight, std)
    if getattr(layer, "bias", None) is not None:
        nn.init.constant_(layer.bias, bias_const)
    return layer


def _int_list(value: int | Sequence[int], n: int, name: str) -> list[int]:
    """Broadcast an int to ``n`` layers, or check a per-layer sequence has ``n`` entries."""
    if isinstance(value, int):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries, expected one per layer ({n})")
    return values


def _flatten_leading(x: torch.Tensor, event_dims: int) -> tuple[torch.Tensor, torch.Size]:
    """Reshape ``(*lead, *event)`` to ``(N, *event)``; also return ``lead`` to restore it."""
    lead = x.shape[: x.ndim - event_dims]
    return x.reshape(-1, *x.shape[x.ndim - event_dims :]), lead


class MLP(nn.Sequential):
    """Linear -> [Dropout] -> [LayerNorm] -> activation per hidden layer, then an optional Linear to ``output_dim``.

    Dropout before layer norm is the DroQ ordering. With ``ortho_init`` hidden layers get orthogonal weights with
    gain sqrt(2) and the output layer gain ``output_std`` (e.g. 0.01 for a policy head, 1.0 for a value head).
    With no hidden layers and ``output_dim=None`` the MLP is the identity.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int | None,
        hidden_sizes: Sequence[int],
        activation: ActivationLike = "tanh",
        layer_norm: bool = False,
        dropout: float = 0.0,
        ortho_init: bool = False,
        output_std: float = 1.0,
    ) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        act = get_activation(activation)
        layers: list[nn.Module] = []
        last = input_dim
        for size in hidden_sizes:
            linear = nn.Linear(last, size)
            layers.append(layer_init(linear) if ortho_init else linear)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            if layer_norm:
                layers.append(nn.LayerNorm(size))
            layers.append(act())
            last = size
        if output_dim is not None:
            head = nn.Linear(last, output_dim)
            layers.append(layer_init(head, std=output_std) if ortho_init else head)
            last = output_dim
        super().__init__(*layers)
        self.input_dim = input_dim
        self.output_dim = last


def pixels_to_float(x: torch.Tensor) -> torch.Tensor:
    """Pixels enter the network as stored: ``uint8`` becomes float in [0, 1], ``bool`` planes 0/1, floats stay."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.dtype == torch.bool:
        return x.float()
    return x


class NatureCNN(nn.Module):
    """The DQN Nature convolutional torso (32x8/4, 64x4/2, 64x3/1) followed by Linear + ReLU.

    ``uint8`` inputs are scaled to [0, 1] here (frames stay uint8 until this point); float inputs are taken as
    already scaled. Input ``(*, in_channels, screen_size, screen_size)``, output ``(*, features_dim)``.
    """

    def __init__(self, in_channels: int, features_dim: int = 512, screen_size: int = 64) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flatten = self.cnn(torch.zeros(1, in_channels, screen_size, screen_size)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())
        self.in_channels = in_channels
        self.screen_size = screen_size
        self.output_dim = features_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, lead = _flatten_leading(x, 3)
        return self.fc(self.cnn(pixels_to_float(x))).reshape(*lead, self.output_dim)


class MinAtarCNN(nn.Module):
    """The MinAtar network's torso (Young & Tian, 2019): one 3x3 conv with 16 filters, then Linear + ReLU.

    Made for MinAtar's 10x10 boolean planes (any small image works); ``bool``/``uint8`` inputs become float here.
    Input ``(*, in_channels, screen_size, screen_size)``, output ``(*, features_dim)``.
    """

    def __init__(self, in_channels: int, features_dim: int = 128, screen_size: int = 10, channels: int = 16) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        side = screen_size - 2
        self.fc = nn.Sequential(nn.Linear(channels * side * side, features_dim), nn.ReLU())
        self.in_channels = in_channels
        self.screen_size = screen_size
        self.output_dim = features_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, lead = _flatten_leading(x, 3)
        return self.fc(self.cnn(pixels_to_float(x))).reshape(*lead, self.output_dim)


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a ``(N, C, H, W)`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvStack(nn.Module):
    """Shared body of :class:`CNN` and :class:`DeCNN`: conv -> [channel LayerNorm] -> activation per layer."""

    transposed = False

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        kernel_sizes: int | Sequence[int],
        strides: int | Sequence[int],
        activation: ActivationLike = "relu",
        layer_norm: bool = False,
        paddings: int | Sequence[int] = 0,
        output_paddings: int | Sequence[int] = 0,
        last_activation: bool = True,
    ) -> None:
        super().__init__()
        n = len(channels)
        if n == 0:
            raise ValueError("channels must list at least one layer")
        kernels = _int_list(kernel_sizes, n, "kernel_sizes")
        strides_ = _int_list(strides, n, "strides")
        pads = _int_list(paddings, n, "paddings")
        out_pads = _int_list(output_paddings, n, "output_paddings")
        act = get_activation(activation)
        layers: list[nn.Module] = []
        last = in_channels
        for i, (ch, k, s, p, op) in enumerate(zip(channels, kernels, strides_, pads, out_pads, strict=True)):
            if self.transposed:
                layers.append(nn.ConvTranspose2d(last, ch, k, stride=s, padding=p, output_padding=op))
            else:
                layers.append(nn.Conv2d(last, ch, k, stride=s, padding=p))
            if i < n - 1 or last_activation:
                if layer_norm:
                    layers.append(_ChannelLayerNorm(ch))
                layers.append(act())
            last = ch
        self.model = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.out_channels = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, lead = _flatten_leading(x, 3)
        y = self.model(x)
        return y.reshape(*lead, *y.shape[1:])

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(C, H, W)`` of the output for an input of ``height x width``."""
        with torch.no_grad():
            return tuple(self.model(torch.zeros(1, self.in_channels, height, width)).shape[1:])


class CNN(_ConvStack):
    """Generic Conv2d stack: per layer conv -> [LayerNorm over channels] -> activation.

    ``kernel_sizes``, ``strides`` and ``paddings`` take one int for every layer or one entry per layer.
    Input ``(*, in_channels, H, W)``, output ``(*, channels[-1], H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        kernel_sizes: int | Sequence[int],
        strides: int | Sequence[int],
        activation: ActivationLike = "relu",
        layer_norm: bool = False,
        paddings: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(in_channels, channels, kernel_sizes, strides, activation, layer_norm, paddings)


class DeCNN(_ConvStack):
    """ConvTranspose2d mirror of :class:`CNN`, for decoders.

    Every layer but the last is followed by [LayerNorm over channels] -> activation; the last one is left linear
    (it produces an image or logits) unless ``last_activation`` is set.
    """

    transposed = True

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        kernel_sizes: int | Sequence[int],
        strides: int | Sequence[int],
        activation: ActivationLike = "relu",
        layer_norm: bool = False,
        paddings: int | Sequence[int] = 0,
        output_paddings: int | Sequence[int] = 0,
        last_activation: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            channels,
            kernel_sizes,
            strides,
            activation,
            layer_norm,
            paddings,
            output_paddings,
            last_activation,
        )


class LayerNormGRUCell(nn.Module):
    """GRU cell with one LayerNorm over the three gate pre-activations (the DreamerV2/V3 recurrent cell).

    The gates come from a single Linear over ``[input, h]``; the update gate is biased by -1, so early in training
    the cell leans towards keeping its state. Input ``(*, input_size)``, state ``(*, hidden_size)``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.linear = Linear(input_size + hidden_size, 3 * hidden_size, bias=bias)
        self.norm = nn.LayerNorm(3 * hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        hx: torch.Tensor | None = None,
        linear: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``linear`` replaces the call of ``self.linear`` on ``[x, hx]`` (same weights, e.g. with a deferred weight
        gradient: :class:`~sheeprl.models.deferred.DeferredWeightGrads`)."""
        if hx is None:
            hx = x.new_zeros(*x.shape[:-1], self.hidden_size)
        gates = self.norm((self.linear if linear is None else linear)(torch.cat((x, hx), dim=-1)))
        reset, cand, update = gates.chunk(3, dim=-1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * hx
