"""HuSCF-GAN's conditional GAN as two networks of five blocks each.

Tawfilis, Amer, El-Aasser and Elshabrawy 2025, "HuSCF-GAN: Heterogeneous
U-shaped Split Clustered Federated GAN" (arXiv 2507.12979), as its public
code builds it: a DCGAN-style generator G1..G5 and discriminator D1..D5 for
28x28x1 images, z = 100, 10 classes. G1 and D1 embed the label (so labels
stay on the client), G5 and D5 produce the image / the probability (so the
loss stays on the client). ``HuscfGanSpec()`` is the published architecture
(BatchNorm); ``norm="group"`` swaps every BatchNorm for GroupNorm (no
statistics shared across clients on the server) and ``width`` scales every
channel count (``LIGHT`` is fedgen's lighter variant). ``aux_classifier``
gives D5 a second head, class logits beside P(real) (AC-GAN, Odena et al.
2017): fedgen's variant trains it on the client's real labels. The label
tensors stay on the client (D5 does), but the gradient D5 sends back to the
server now depends on each example's class, so per-example gradients at the
cut cluster by label: the label-leakage channel of split learning (Li et al.
2022, "Label Leakage and Protection in Two-party Split Learning"). With the
published single output that gradient is one scalar times a shared vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fedgen.errors import ConfigError

Norm = Literal["batch", "group", "none"]


@dataclass(frozen=True)
class HuscfGanSpec:
    """Architecture knobs; the defaults are the published network."""

    latent_dim: int = 100
    num_classes: int = 10
    width: float = 1.0
    norm: Norm = "batch"
    groups: int = 8
    #: D5 also returns class logits: its output is ``(B, 1 + num_classes)``.
    aux_classifier: bool = False
    #: Channels-last layout (NHWC): the blocks' 4-D weights are built channels-last, so
    #: each convolution's output is too, and G1 hands G2 channels-last maps. Layout only:
    #: the same function, in other rounding.
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.norm not in ("batch", "group", "none"):
            raise ConfigError(f"norm {self.norm!r}: use 'batch', 'group' or 'none'")
        if not self.width > 0:
            raise ConfigError(f"width {self.width}: use a positive channel multiplier, e.g. 0.25")
        for c in self.channels():
            if self.norm == "group" and c % self.groups:
                raise ConfigError(
                    f"width {self.width} gives {c} channels, not divisible by groups="
                    f"{self.groups}; pick a width whose channel counts are multiples of it"
                )

    def channels(self) -> tuple[int, int, int, int]:
        """Channel counts (256, 128, 64, 128...) scaled by ``width``: (c256, c128, c64, c256d)."""
        return tuple(max(1, round(c * self.width)) for c in (256, 128, 64, 256))  # type: ignore[return-value]


FAITHFUL = HuscfGanSpec()
GROUPNORM = HuscfGanSpec(norm="group")
LIGHT = HuscfGanSpec(width=0.25, norm="group")


def _norm2d(spec: HuscfGanSpec, channels: int) -> nn.Module:
    if spec.norm == "batch":
        return nn.BatchNorm2d(channels)
    if spec.norm == "group":
        return nn.GroupNorm(spec.groups, channels)
    return nn.Identity()


class GeneratorStem(nn.Module):
    """G1: ``(z (B, latent), y (B,)) -> (B, c256, 7, 7)``; the label is embedded here."""

    def __init__(self, spec: HuscfGanSpec) -> None:
        super().__init__()
        c = spec.channels()[0]
        self.channels = c
        self.label_embedding = nn.Embedding(spec.num_classes, spec.num_classes)
        self.fc = nn.Linear(spec.latent_dim + spec.num_classes, c * 7 * 7)
        # The published network normalises the 12544 features before reshaping.
        self.norm1d = nn.BatchNorm1d(c * 7 * 7) if spec.norm == "batch" else None
        self.norm2d = _norm2d(spec, c) if spec.norm != "batch" else None
        self.act = nn.ReLU()
        self.to_channels_last = spec.channels_last

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.label_embedding(y)], dim=1))  # (B, c*49)
        if self.norm1d is not None:
            h = self.norm1d(h)
        h = h.view(-1, self.channels, 7, 7)
        if self.norm2d is not None:
            h = self.norm2d(h)
        h = self.act(h)
        return h.contiguous(memory_format=torch.channels_last) if self.to_channels_last else h


class DiscriminatorStem(nn.Module):
    """D1: ``(x (B, 1, 28, 28) in [-1, 1], y (B,)) -> (B, c64, 14, 14)``; label as a plane."""

    def __init__(self, spec: HuscfGanSpec) -> None:
        super().__init__()
        c = spec.channels()[2]
        self.label_embedding = nn.Embedding(spec.num_classes, 28 * 28)
        self.conv = nn.Conv2d(2, c, 4, 2, 1)
        self.norm = _norm2d(spec, c)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        plane = self.label_embedding(y).view(-1, 1, 28, 28)
        return self.act(self.norm(self.conv(torch.cat([x, plane], dim=1))))


class DiscriminatorTail(nn.Sequential):
    """D5: ``(B, c256d, 3, 3) -> (B, 1)`` P(real), or ``(B, 1 + K)`` with class logits.

    A ``Sequential`` (Flatten, Linear, Sigmoid) as published, so its tensors keep
    their published names (``4.1.weight``) and older checkpoints load; the class
    head, if any, is ``classes``.
    """

    def __init__(self, spec: HuscfGanSpec) -> None:
        features = spec.channels()[3] * 3 * 3
        super().__init__(nn.Flatten(), nn.Linear(features, 1), nn.Sigmoid())
        self.classes = nn.Linear(features, spec.num_classes) if spec.aux_classifier else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self[0](h)
        # The logit and its sigmoid in float32 whatever the compute dtype: in bfloat16 (8
        # mantissa bits) the logit moves in steps of 0.03 near 7, and the sigmoid rounds
        # every P(real) above 0.998 to 1, where the cross-entropy saturates.
        with torch.autocast(h.device.type, enabled=False):
            p_real = self[2](self[1](h.float()))
        if self.classes is None:
            return p_real
        return torch.cat([p_real, self.classes(h)], dim=1)


def _up(spec: HuscfGanSpec, c_in: int, c_out: int, k: int, s: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, k, s, 1), _norm2d(spec, c_out), nn.ReLU())


def _down(spec: HuscfGanSpec, c_in: int, c_out: int, k: int, s: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, 1), _norm2d(spec, c_out), nn.LeakyReLU(0.2))


def _laid_out(spec: HuscfGanSpec, blocks: list[nn.Module]) -> list[nn.Module]:
    """``blocks`` with their 4-D weights channels-last if the spec asks (what
    ``Module.to(memory_format=...)`` converts); split copies of a block keep the layout,
    and a state loaded into them (copied in place) takes it."""
    if spec.channels_last:
        for block in blocks:
            for param in block.parameters():
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
    return blocks


def generator_blocks(spec: HuscfGanSpec = FAITHFUL) -> list[nn.Module]:
    """G1..G5: 7x7 -> 14x14 (G2) -> 14x14 (G3) -> 28x28 (G4) -> image in [-1, 1] (G5)."""
    c256, c128, c64, _ = spec.channels()
    return _laid_out(
        spec,
        [
            GeneratorStem(spec),
            _up(spec, c256, c128, 4, 2),  # (B, c128, 14, 14)
            _up(spec, c128, c128, 3, 1),  # (B, c128, 14, 14)
            _up(spec, c128, c64, 4, 2),  # (B, c64, 28, 28)
            nn.Sequential(nn.ConvTranspose2d(c64, 1, 3, 1, 1), nn.Tanh()),  # (B, 1, 28, 28)
        ],
    )


def discriminator_blocks(spec: HuscfGanSpec = FAITHFUL) -> list[nn.Module]:
    """D1..D5: 14x14 (D1) -> 7x7 (D2) -> 7x7 (D3) -> 3x3 (D4) -> P(real) (D5)."""
    _, c128, c64, c256 = spec.channels()
    return _laid_out(
        spec,
        [
            DiscriminatorStem(spec),
            _down(spec, c64, c128, 4, 2),  # (B, c128, 7, 7)
            _down(spec, c128, c128, 3, 1),  # (B, c128, 7, 7)
            _down(spec, c128, c256, 4, 2),  # (B, c256, 3, 3)
            DiscriminatorTail(spec),  # (B, 1) or (B, 1 + K)
        ],
    )


#: Index of D3, the block whose server-side output HuSCF-GAN clusters clients by.
CLUSTER_BLOCK = 2
