"""The downstream classifier as a Task, so the federation engine trains it like any model.

The generator tasks learn to draw images; this one learns to label them. It speaks the
same contract (``train_local``, federated state, private state), so FedAvg, the other
strategies and every update transform (clipping, client-level DP, compression, secure
aggregation) apply to it unchanged. Its network is the evaluation ``SmallCNN``
(``fedgen.eval.classifier``), the classifier of HuSCF-GAN's TSTR and of GeFL's
downstream experiments at this scale.

It is not registered in ``TASKS``: that registry lists generative families, whose
contract tests sample from them, and a classifier generates nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedgen.data.client_data import ClientData
from fedgen.eval.classifier import SmallCNN
from fedgen.tasks.base import Task, TaskParams


class ClassifierParams(TaskParams):
    """Local training of the classifier: Adam at ``lr`` on batches of ``batch_size``."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


class ClassifierTask(Task):
    """A ``SmallCNN`` trained with cross-entropy on a client's (possibly topped-up) shard."""

    Params = ClassifierParams
    params: ClassifierParams

    def build(self) -> dict[str, nn.Module]:
        return {"classifier": SmallCNN(self.num_classes)}

    @property
    def network(self) -> SmallCNN:
        """The classifier network itself (for prediction and server-side fine-tuning)."""
        module = self.modules["classifier"]
        assert isinstance(module, SmallCNN)
        return module

    def train_local(
        self, data: ClientData, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        p = self.params
        net = self.network
        with self.local_training(generator) as local:
            # A fresh optimizer per call: Adam's moments are not federated state.
            opt = local.optimizer(
                torch.optim.Adam(net.parameters(), lr=float(config.get("lr", p.lr)), betas=p.betas),
                ["classifier"],
            )
            net.train()
            batches = local.batches(data, p.batch_size)
            total = 0.0
            for _ in range(steps):
                x, y = next(batches)  # (B, 1, 28, 28) in [0, 1], (B,)
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
        net.eval()
        return {"loss/cross_entropy": total / max(steps, 1)}

    def sample(self, condition: Any, generator: torch.Generator) -> Any:
        raise TypeError(
            "ClassifierTask labels images and generates none; sample from the generator "
            "run instead (fedgen sample RUN)"
        )
