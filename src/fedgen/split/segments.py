"""A network of blocks cut per client: each client's head and tail, and the server's middle.

A network is an ordered list of blocks (``nn.Module`` each). Block 0 takes the
client's own inputs (e.g. ``(z, labels)`` or ``(images, labels)``); every
later block takes one tensor. The server holds one copy of every block that
any client's cut leaves to it and runs each block once per pass, on the
concatenated activations of all clients that need it (HuSCF-GAN, Tawfilis et
al. 2025, arXiv 2507.12979, Sec. III).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fedgen.errors import ConfigError
from fedgen.split.cut import Cut


class ClientSegments(nn.Module):
    """One client's part of a network: blocks ``[0, head)`` and ``[n - tail, n)``."""

    def __init__(self, blocks: Sequence[nn.Module], cut: Cut, name: str = "network") -> None:
        super().__init__()
        cut.check(len(blocks), name)
        self.cut = cut
        self.num_blocks = len(blocks)
        self.head = nn.ModuleList(copy.deepcopy(list(blocks[: cut.head])))
        self.tail = nn.ModuleList(copy.deepcopy(list(blocks[len(blocks) - cut.tail :])))

    def forward_head(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The activation the client sends to the server."""
        h = self.head[0](*inputs)
        for block in self.head[1:]:
            h = block(h)
        return h

    def forward_tail(self, h: torch.Tensor) -> torch.Tensor:
        """The client's output (image, probability) from the server's activation."""
        for block in self.tail:
            h = block(h)
        return h

    def indexed_blocks(self) -> dict[int, nn.Module]:
        """``{block index in the whole network: block}`` of the blocks this client holds."""
        n = self.num_blocks
        out: dict[int, nn.Module] = dict(enumerate(self.head))
        out.update({n - self.cut.tail + i: b for i, b in enumerate(self.tail)})
        return out

    def block_states(self) -> dict[int, dict[str, torch.Tensor]]:
        """``{block index: state_dict}`` of the blocks this client holds."""
        return {i: b.state_dict() for i, b in self.indexed_blocks().items()}


class ServerSegments(nn.Module):
    """The server's blocks of a network, run for all clients of a pass at once."""

    def __init__(
        self, blocks: Sequence[nn.Module], cuts: Mapping[int, Cut], name: str = "network"
    ) -> None:
        super().__init__()
        if not cuts:
            raise ConfigError(f"{name}: give at least one client cut")
        n = len(blocks)
        for cut in cuts.values():
            cut.check(n, name)
        self.cuts = dict(cuts)
        self.num_blocks = n
        self.start = min(c.head for c in cuts.values())
        self.stop = max(n - c.tail for c in cuts.values())
        self.blocks = nn.ModuleDict(
            {str(i): copy.deepcopy(blocks[i]) for i in range(self.start, self.stop)}
        )
        #: block index whose per-client output ``forward`` keeps in ``captured``.
        self.capture_block: int | None = None
        self.captured: dict[int, torch.Tensor] = {}

    def forward(self, inputs: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """``{client: activation entering block head}`` -> ``{client: activation leaving
        block n - tail - 1}``; each block runs once on the clients that need it."""
        unknown = set(inputs) - set(self.cuts)
        if unknown:
            raise ConfigError(f"no cut for clients {sorted(unknown)}; give each client a cut")
        current = dict(inputs)
        self.captured = {}
        for j in range(self.start, self.stop):
            members = [
                c
                for c in sorted(current)
                if self.cuts[c].head <= j < self.num_blocks - self.cuts[c].tail
            ]
            if not members:
                continue
            sizes = [current[c].shape[0] for c in members]
            # (sum of batch sizes, C, H, W): one call per block, as on a real server.
            out = self.blocks[str(j)](torch.cat([current[c] for c in members], dim=0))
            for c, chunk in zip(members, torch.split(out, sizes, dim=0), strict=True):
                current[c] = chunk
                if j == self.capture_block:
                    self.captured[c] = chunk.detach()
        return current
