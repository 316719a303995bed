"""How the parties of a vertically split TVAE train it, and what crosses between them.

One iteration is TVAE's (Xu et al. 2019: reconstruction weighted by ``loss_factor`` plus
the KL divergence to the prior, one Adam step) with the networks cut as
``fedgen.tasks.tabular.vertical_tvae`` cuts them. Every tensor that passes between
parties goes through the ``WireChannel`` (encoded, counted, decoded). Per iteration:

  1. The clients draw the batch's records from a seed they share (epochs of a shuffled
     order, as ``TableClientData.batches``); each reads its own columns of them. No
     record id crosses. The server must not know that seed, or it could link each
     share to a record: it is keyed by the run's secret key, not by the round seeds
     the server issues (``fedgen.engine.backends.vertical.clients_seed``).
  2. Each client sends the server its share of the encoder's first layer over its
     encoded columns.
  3. The server sums the shares, finishes the encoder, draws the reparameterisation
     noise, runs the decoder body and sends every client the decoder's last hidden
     layer.
  4. Each client decodes its columns with its head, computes their reconstruction term
     (its rows never leave it), back-propagates it through its head, and sends the
     server the gradient with respect to the hidden layer and its term's value (for
     the round's metrics).
  5. The server back-propagates the clients' hidden-layer gradients and the KL term
     through its layers and sends every client the gradient with respect to the summed
     shares (the same for each: a sum's gradient); each client back-propagates it into
     its share.
  6. Every party steps its own Adam (per-parameter, so together exactly TVAE's Adam);
     the clients clamp their standard deviations as TVAE does.

What the server sees: each client's share (a linear projection, by weights only the
client holds, of its encoded columns) in the clients' shuffled order, the
reconstruction terms' values, and gradients. What a client sees: the decoder's hidden
layer and gradients. No raw value crosses (``tests/unit/tasks/test_vertical_tvae.py``
searches the encoded messages for them), and clients send one another nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedgen.data.table_data import TableClientData
from fedgen.tasks.tabular.tvae_functional import SIGMA_RANGE, RowReconstruction, row_kl
from fedgen.tasks.tabular.vertical_channel import SERVER, WireChannel, party
from fedgen.tasks.tabular.vertical_training import JointSeeds
from fedgen.tasks.tabular.vertical_tvae import (
    DECODER_BODY,
    ENCODER_TOP,
    DecoderHead,
    VerticalTvaeTask,
    decoder_head_name,
    encoder_bottom_name,
)


@dataclass
class _Party:
    """One client: its rows, its modules and its optimizer."""

    cid: int
    data: TableClientData
    bottom: nn.Module
    head: DecoderHead
    reconstruction: RowReconstruction
    opt: torch.optim.Optimizer

    @property
    def name(self) -> str:
        return party(self.cid)


class VerticalTvaeTrainer:
    """Runs joint iterations of a ``VerticalTvaeTask`` over the clients' column blocks."""

    def __init__(
        self,
        task: VerticalTvaeTask,
        data: list[TableClientData],
        seeds: JointSeeds,
        channel: WireChannel,
        lr: float,
    ) -> None:
        p = task.params
        self.task, self.channel, self.p = task, channel, p
        self.top, self.body = task.modules[ENCODER_TOP], task.modules[DECODER_BODY]
        adam: dict[str, Any] = {"lr": lr, "weight_decay": p.weight_decay, "betas": p.betas}
        server_params = [*self.top.parameters(), *self.body.parameters()]
        self.opt_server = torch.optim.Adam(server_params, **adam)
        self.parties = []
        for i, d in enumerate(data):
            bottom, head = task.modules[encoder_bottom_name(i)], task.modules[decoder_head_name(i)]
            assert isinstance(head, DecoderHead)
            opt = torch.optim.Adam([*bottom.parameters(), *head.parameters()], **adam)
            self.parties.append(_Party(i, d, bottom, head, task.reconstructions[i], opt))
        self.num_records = data[0].num_examples
        if any(d.num_examples != self.num_records for d in data):
            raise ValueError("the clients hold different numbers of records; align them first")
        self.shared = np.random.default_rng(seeds.clients)
        self.noise = torch.Generator().manual_seed(seeds.server)
        self._order = np.zeros(0, np.int64)

    def next_records(self) -> torch.Tensor:
        """Step 1: the batch's record indices, from the clients' shared seed (epochs of a
        shuffled order, dropping an epoch's last partial batch)."""
        b = min(self.p.batch_size, self.num_records)
        if len(self._order) < b:
            self._order = self.shared.permutation(self.num_records)
        records, self._order = self._order[:b], self._order[b:]
        return torch.from_numpy(records)

    def step(self, records: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[float, float]:
        """One iteration on ``records`` (steps 2-6); ``eps (B, latent)`` is the server's
        reparameterisation noise (drawn from its generator when None). Returns the batch
        means of the reconstruction (summed over the clients' columns) and KL terms."""
        p = self.p
        client_side, shares = [], []
        for q in self.parties:
            q.opt.zero_grad(set_to_none=True)
            x = q.data.encoded[records]
            share = q.bottom(x)
            client_side.append((x, share))
            shares.append(self.channel.one(q.name, SERVER, "share", share).requires_grad_(True))
        # The server: encoder top, latent, decoder body.
        self.opt_server.zero_grad(set_to_none=True)
        mu, logvar = self.top(shares)
        if eps is None:
            eps = torch.randn(mu.shape, generator=self.noise)
        z = mu + eps * torch.exp(0.5 * logvar)
        h = self.body(z)
        kl = row_kl(mu, logvar).mean()
        hidden_grads, recon_total = [], 0.0
        for q, (x, _) in zip(self.parties, client_side, strict=True):
            h_q = self.channel.one(SERVER, q.name, "hidden", h).requires_grad_(True)
            recon = q.reconstruction(q.head(h_q), x, q.head.sigma).mean()
            (p.loss_factor * recon).backward()  # its head's gradients, and the hidden one's
            assert h_q.grad is not None
            got = self.channel.send(
                q.name, SERVER, {"hidden_grad": h_q.grad, "loss": recon.detach().reshape(1)}
            )
            hidden_grads.append(got["hidden_grad"])
            recon_total += float(got["loss"][0])
        torch.autograd.backward([h, kl], [torch.stack(hidden_grads).sum(dim=0), torch.ones(())])
        for q, (_, share), s in zip(self.parties, client_side, shares, strict=True):
            assert s.grad is not None
            share.backward(self.channel.one(SERVER, q.name, "share_grad", s.grad))
            q.opt.step()
            with torch.no_grad():
                q.head.sigma.clamp_(*SIGMA_RANGE)
        self.opt_server.step()
        return recon_total, float(kl.detach())

    def train(self, steps: int) -> dict[str, float]:
        """``steps`` joint iterations; mean losses."""
        for module in self.task.modules.values():
            module.train()
        totals = {"loss/reconstruction": 0.0, "loss/kl": 0.0}
        for _ in range(steps):
            recon, kl = self.step(self.next_records())
            totals["loss/reconstruction"] += recon
            totals["loss/kl"] += kl
        return {k: v / max(steps, 1) for k, v in totals.items()}
