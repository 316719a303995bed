"""A small class-conditional UNet for diffusion on small images (the network, not the process).

After Ho et al. 2020's UNet (residual blocks, a sinusoidal time embedding, self-attention
at the lowest resolution) in the readable style of lucidrains' ``denoising_diffusion_pytorch``,
cut down to two resolution steps so it trains on a CPU. GroupNorm, never BatchNorm: batch
statistics break DP-SGD (Opacus) and vectorized clients. Only ``Conv2d``, ``Linear``,
``GroupNorm`` and ``Embedding`` hold parameters, layers Opacus computes per-example
gradients for; the attention is written over ``Linear`` projections (not
``nn.MultiheadAttention``) for that reason, and so that LoRA (peft) can target them.

The class embedding has one extra row, ``num_classes``: the "no label" of classifier-free
guidance (Ho & Salimans 2022), which training feeds in place of dropped labels.

Blocks are top-level children named for partial federation (FedDiffuse, de Goede et al.
2024): ``time_embed``, ``class_embed``, ``in_conv``, ``down0``, ``down1`` (the encoder),
``mid`` (the latent), ``up1``, ``up0``, ``out`` (the decoder); see ``UNET_BLOCKS``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: The UNet's blocks in forward order, grouped by the part of the U they belong to.
ENCODER_BLOCKS = ("in_conv", "down0", "down1")
LATENT_BLOCKS = ("mid",)
DECODER_BLOCKS = ("up1", "up0", "out")
EMBEDDING_BLOCKS = ("time_embed", "class_embed")
UNET_BLOCKS = (*EMBEDDING_BLOCKS, *ENCODER_BLOCKS, *LATENT_BLOCKS, *DECODER_BLOCKS)

#: Halvings of the image side; height and width must be multiples of 2**DOWNSAMPLES.
DOWNSAMPLES = 2
#: Image channel counts the UNet is built for (grey, RGB): what sample grids can show.
CHANNELS = (1, 3)
#: Groups of every GroupNorm; widths must be multiples of it.
NORM_GROUPS = 8


def unet_shape_problems(image_shape: tuple[int, int, int], width: int) -> list[str]:
    """Why a UNet of ``width`` cannot take images of ``image_shape`` (empty: it can)."""
    channels, height, wide = image_shape
    problems = []
    if channels not in CHANNELS:
        problems.append(
            f"the UNet takes images of {' or '.join(map(str, CHANNELS))} channels, "
            f"got {channels}; convert the images to grey or RGB"
        )
    side = 2**DOWNSAMPLES
    if height % side or wide % side or min(height, wide) < 2 * side:
        problems.append(
            f"the UNet halves the image side {DOWNSAMPLES} times, so height and width must "
            f"be multiples of {side} and at least {2 * side}, got {height}x{wide}; pad or "
            f"resize the images (28x28 and 32x32 work)"
        )
    if width < NORM_GROUPS or width % NORM_GROUPS:
        problems.append(
            f"task.params.width must be a positive multiple of {NORM_GROUPS} (the GroupNorm "
            f"groups), got {width}"
        )
    return problems


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps ``t (B,)`` -> ``(B, dim)`` (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    """``(x (B, cin, H, W), emb (B, E)) -> (B, cout, H, W)``: two 3x3 convs, emb added between."""

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, cin) if cin % NORM_GROUPS == 0 else None
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x)) if self.norm1 is not None else x
        h = self.conv1(h) + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the ``H*W`` positions, ``(B, C, H, W) -> same``.

    ``qkv`` and ``proj`` are ``Linear`` layers (LoRA's usual targets in a diffusion UNet).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(NORM_GROUPS, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=2)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=2)  # (B, HW, HW)
        out = self.proj(attn @ v)  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Down(nn.Module):
    """A residual block, then a strided conv halving the side; returns the skip too."""

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim)
        self.down = nn.Conv2d(cout, cout, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.res(x, emb)
        return self.down(skip), skip


class Mid(nn.Module):
    """The latent: residual block, self-attention, residual block at the lowest resolution."""

    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.res1 = ResBlock(channels, channels, emb_dim)
        self.attn = SelfAttention(channels)
        self.res2 = ResBlock(channels, channels, emb_dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x, emb)), emb)


class Up(nn.Module):
    """Nearest upsampling doubling the side, a 3x3 conv, the skip concatenated, a residual block."""

    def __init__(self, cin: int, cskip: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.up = nn.Conv2d(cin, cin, 3, padding=1)
        self.res = ResBlock(cin + cskip, cout, emb_dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.res(torch.cat([x, skip], dim=1), emb)


class Out(nn.Module):
    """GroupNorm, SiLU, 3x3 conv to the image's channels: the predicted noise."""

    def __init__(self, cin: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(NORM_GROUPS, cin)
        self.conv = nn.Conv2d(cin, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x)))


class ConditionalUNet(nn.Module):
    """``(x_t (B, C, H, W), t (B,), y (B,)) -> predicted noise (B, C, H, W)``.

    ``y == num_classes`` is the unconditional "no label". Widths: ``width`` at full
    resolution, ``2 * width`` at half and quarter.

    Raises ``ValueError`` for images or a width it cannot take (``unet_shape_problems``).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int) -> None:
        super().__init__()
        problems = unet_shape_problems(image_shape, width)
        if problems:
            raise ValueError("; ".join(problems))
        channels = image_shape[0]
        emb = 4 * width
        self.width = width
        self.num_classes = num_classes
        self.time_embed = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_embed = nn.Embedding(num_classes + 1, emb)
        self.in_conv = nn.Conv2d(channels, width, 3, padding=1)
        self.down0 = Down(width, width, emb)  # side S -> S/2, skip (width, S)
        self.down1 = Down(width, 2 * width, emb)  # S/2 -> S/4, skip (2w, S/2)
        self.mid = Mid(2 * width, emb)
        self.up1 = Up(2 * width, 2 * width, 2 * width, emb)  # S/4 -> S/2
        self.up0 = Up(2 * width, width, width, emb)  # S/2 -> S
        self.out = Out(width, channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.width)) + self.class_embed(y)  # (B, 4w)
        h = self.in_conv(x)
        h, skip0 = self.down0(h, emb)
        h, skip1 = self.down1(h, emb)
        h = self.mid(h, emb)
        h = self.up1(h, skip1, emb)
        h = self.up0(h, skip0, emb)
        out: torch.Tensor = self.out(h)
        return out
