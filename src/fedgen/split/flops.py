"""Per-block forward/backward FLOPs and activation bytes, measured on the real modules.

The analytic latency model of HuSCF-GAN (Tawfilis et al. 2025, arXiv
2507.12979) needs, per block, the FLOPs of one forward and one backward pass
on a batch and the bytes of the block's output. ``method="torch"`` counts
them with ``torch.utils.flop_counter.FlopCounterMode`` (matmul/convolution
FLOPs as autograd really runs them); ``method="paper"`` applies the public
code's per-layer formulas (which add bias, normalisation and activation
FLOPs) to the same modules, so the published latency can be checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedgen.errors import ConfigError

Method = Literal["torch", "paper"]


@dataclass(frozen=True)
class BlockCosts:
    """Per block, for one batch: forward FLOPs, backward FLOPs, output bytes."""

    forward_flops: tuple[float, ...]
    backward_flops: tuple[float, ...]
    output_bytes: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.forward_flops)
        if len(self.backward_flops) != n or len(self.output_bytes) != n:
            raise ConfigError(
                "forward_flops, backward_flops and output_bytes need one entry per block"
            )


# The public code's per-sample (forward, backward) factors per output element.
_ELEMENTWISE = {nn.ReLU: (1, 2), nn.LeakyReLU: (2, 3), nn.Tanh: (5, 3), nn.Sigmoid: (3, 2)}


def _paper_flops(module: nn.Module, out: torch.Tensor, first: bool) -> tuple[float, float]:
    """One leaf module's (forward, backward) FLOPs per sample by the public code's formulas."""
    per_sample = out[0]
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        spatial = per_sample.shape[1] * per_sample.shape[2]
        base = 2 * module.in_channels * module.out_channels * kh * kw * spatial
        bias = module.out_channels * spatial
        return base + bias, (1 if first else 2) * base + bias
    if isinstance(module, nn.Linear):
        base = 2 * module.in_features * module.out_features
        return base + module.out_features, (1 if first else 2) * base + module.out_features
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.GroupNorm):
        return 8 * per_sample.numel(), 11 * per_sample.numel()
    for kind, (f, b) in _ELEMENTWISE.items():
        if isinstance(module, kind):
            return f * per_sample.numel(), b * per_sample.numel()
    return 0.0, 0.0  # embeddings (look-ups), flatten, identity


def measure_block_costs(
    blocks: Sequence[nn.Module], inputs: tuple[torch.Tensor, ...], method: Method = "torch"
) -> BlockCosts:
    """Run ``blocks`` in order on ``inputs`` (a batch) and measure each block.

    Every block after the first gets an input that requires grad, as on the
    server, so its backward includes the gradient w.r.t. its input.
    """
    if method not in ("torch", "paper"):
        raise ConfigError(f"FLOP counting method {method!r}: use 'torch' or 'paper'")
    fwd: list[float] = []
    bwd: list[float] = []
    nbytes: list[int] = []
    args = inputs
    first_leaf = True
    for i, block in enumerate(blocks):
        if i > 0:
            args = (args[0].detach().requires_grad_(True),)
        if method == "torch":
            with FlopCounterMode(display=False) as counter:
                out = block(*args)
            fwd.append(float(counter.get_total_flops()))
            with FlopCounterMode(display=False) as counter:
                out.backward(torch.ones_like(out))
            bwd.append(float(counter.get_total_flops()))
        else:
            records: list[tuple[nn.Module, torch.Tensor]] = []
            hooks = [
                m.register_forward_hook(lambda m, _i, o, rec=records: rec.append((m, o)))
                for m in block.modules()
                if not list(m.children())
            ]
            try:
                out = block(*args)
            finally:
                for h in hooks:
                    h.remove()
            f_sum = b_sum = 0.0
            batch = out.shape[0]
            for module, o in records:
                is_main = isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
                f, b = _paper_flops(module, o, first_leaf and is_main)
                first_leaf = first_leaf and not is_main
                f_sum += f * batch
                b_sum += b * batch
            fwd.append(f_sum)
            bwd.append(b_sum)
        nbytes.append(int(math.prod(out.shape)) * out.element_size())
        args = (out,)
    return BlockCosts(tuple(fwd), tuple(bwd), tuple(nbytes))
