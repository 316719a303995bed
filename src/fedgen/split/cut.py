"""Where a network of blocks is cut between a client and the server.

U-shaped split learning (Vepakomma et al. 2018, "Split learning for health:
Distributed deep learning without sharing raw patient data"; as used by
HuSCF-GAN, Tawfilis et al. 2025, arXiv 2507.12979): the client keeps the
first ``head`` blocks (so its inputs and labels are embedded locally) and the
last ``tail`` blocks (so its outputs and loss are computed locally); the
server runs the blocks in between.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgen.errors import ConfigError


@dataclass(frozen=True)
class Cut:
    """Blocks ``[0, head)`` and ``[num_blocks - tail, num_blocks)`` run on the client."""

    head: int = 1
    tail: int = 1

    def check(self, num_blocks: int, name: str = "network") -> None:
        """Raise ``ConfigError`` unless the client keeps its first and last block and
        the server keeps at least one block."""
        for side, value in (("head", self.head), ("tail", self.tail)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{name} cut {side}={value!r}: the client must keep its "
                    f"{'first' if side == 'head' else 'last'} block (labels and loss stay "
                    f"local); use {side} >= 1"
                )
        if self.head + self.tail > num_blocks - 1:
            raise ConfigError(
                f"{name} cut head={self.head}, tail={self.tail} leaves no block of "
                f"{num_blocks} on the server; use head + tail <= {num_blocks - 1}"
            )

    def server_range(self, num_blocks: int) -> range:
        """Indices of the blocks this client's activations pass through on the server."""
        return range(self.head, num_blocks - self.tail)

    @classmethod
    def from_bits(cls, head_bit: int, tail_bit: int) -> Cut:
        """HuSCF-GAN's encoding: bit 1 moves the 2nd (or 2nd-to-last) block to the client."""
        return cls(head=1 + int(head_bit), tail=1 + int(tail_bit))
