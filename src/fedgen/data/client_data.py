"""One client's private shard, and the batches its local training draws."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fedgen.data.dataset import ImageDataset


@dataclass(frozen=True)
class ClientData:
    """The private data of client ``client_id``.

    It never leaves the client: tasks read it inside ``train_local``, and only
    a ``ClientResult`` (update tensors, counts, metrics) goes back to the server.
    """

    client_id: int
    data: ImageDataset

    @property
    def num_examples(self) -> int:
        return len(self.data)

    def batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled batches ``(images (B,1,28,28) float in [0,1], labels (B,))``.

        Each pass is a fresh permutation drawn from ``generator``; a shard
        smaller than ``batch_size`` yields itself whole every time.
        """
        n = self.num_examples
        if n == 0:
            raise ValueError(
                f"client {self.client_id} holds no examples; use a partitioner "
                "with min_size >= 1 or fewer clients"
            )
        images, labels = self.data.images, self.data.labels
        bs = min(batch_size, n)
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - bs + 1, bs):
                idx = order[start : start + bs]
                yield images[idx].float().div_(255.0), labels[idx]
