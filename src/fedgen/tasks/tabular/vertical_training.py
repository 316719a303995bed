"""How the parties of a vertically split CTGAN train it, and what crosses between them.

One iteration is CTGAN's (a critic step, then a generator step; Xu et al. 2019) with
the networks cut as ``fedgen.tasks.tabular.vertical_ctgan`` cuts them. Every tensor
that passes from one party to another goes through the ``WireChannel`` (encoded,
counted, decoded); nothing else is shared. Per iteration:

Critic step
  1. The clients draw, from a seed they share and the server does not know (keyed by
     the run's secret key: ``fedgen.engine.backends.vertical.clients_seed``), which
     categorical column conditions each row of the batch (uniformly over all clients'
     categorical columns), the order the real rows are shuffled into, and the
     gradient penalty's mixing weights.
  2. The owner of a row's column draws its category (by log-frequency in its own
     rows) and a record holding it (training-by-sampling), and sends the other
     clients only the record ids of its rows (int64): each client reads its own
     columns of those records. Without categorical columns the shared seed draws
     the records.
  3. Each client sends the server its part of the conditional vector for the fakes.
     These are draws from its category frequencies, not any record's value: the
     shuffled order of the real rows is the clients' secret, so the server cannot
     tell which real row a condition belongs to.
  4. The server runs the body on noise and the conditions and sends every client the
     hidden rows. Each client generates its columns with its head and runs its share
     of the critic's first layer on its real columns (with the shuffled conditions,
     which stay with it), its fake columns, and their mixture; the three go up.
  5. The server sums the shares and finishes the critic (Wasserstein loss). The
     gradient penalty of WGAN-GP needs the norm of the critic's gradient with respect
     to the *whole* mixed row, whose parts sit with different clients; it is computed
     exactly, by double back-propagation across the cut: the server sends each client
     the gradient of the score with respect to its share, each client returns the
     squared norm of its part of the input gradient, the server returns the penalty's
     gradient with respect to those, each client returns the gradient with respect
     to what the server sent it, and the server back-propagates that through its own
     layers.
  6. The server sends each client the gradients of its three shares; both sides step
     their own optimizers.

Generator step
  The clients draw conditions again (step 1-3, no records), the server runs the
  body and sends the hidden rows, each client generates its columns, adds CTGAN's
  condition loss for the rows it conditions, runs its share of the critic's first
  layer and sends it up; the server scores their sum, sends the gradients back, each
  client steps its head and returns the gradient with respect to the hidden rows, and the server
  steps the body on their sum.

What the server sees: conditions drawn from category frequencies, each client's
share of the critic's first layer (a linear projection, by weights only the client
holds, of packs of ``pac`` rows of its columns) for real and synthetic rows in an
order it cannot link to records, and gradients. What a client sees of another:
record ids (which records were drawn, not why). As in all split learning, what
crosses is a function of the raw columns; no raw value crosses
(``tests/unit/tasks/test_vertical_ctgan.py`` searches the encoded messages for them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedgen.data.table_data import TableClientData
from fedgen.data.table_encoder import CategoricalEncoding, Span
from fedgen.seeding import global_rng_from
from fedgen.tasks.tabular.base import apply_activations
from fedgen.tasks.tabular.vertical_channel import SERVER, WireChannel, party
from fedgen.tasks.tabular.vertical_ctgan import (
    BODY,
    TOP,
    VerticalCtganTask,
    bottom_name,
    head_name,
)


def _grad(leaf: torch.Tensor) -> torch.Tensor:
    """The gradient a leaf received (zeros when nothing depended on it)."""
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)


@dataclass(frozen=True)
class JointSeeds:
    """The seeds of one round: the server's, the one the clients share, each client's own."""

    server: int
    clients: int
    own: tuple[int, ...]


@dataclass
class _Party:
    """One client: its rows, its modules, its optimizers and its own random draws."""

    cid: int
    data: TableClientData
    head: nn.Module
    bottom: nn.Module
    spans: list[Span]
    categorical: list[tuple[CategoricalEncoding, int]]
    cond_width: int
    rng: np.random.Generator
    batch: int
    opt_head: torch.optim.Optimizer
    opt_bottom: torch.optim.Optimizer

    @property
    def name(self) -> str:
        return party(self.cid)

    def conditions(
        self, owned: list[np.ndarray], need_records: bool
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """Its part of the conditional vector ``(B, cond_width)`` for the rows it conditions
        (``owned[j]``: positions conditioned on its ``j``-th categorical column), their
        positions, categories, and (when asked) a record of each row's category."""
        cond = torch.zeros(self.batch, self.cond_width)
        positions, categories, records = [], [], []
        offset = 0
        for (enc, _), picked in zip(self.categorical, owned, strict=True):
            if len(picked):
                codes = self.data.codes[enc.name]
                counts = np.bincount(codes, minlength=enc.width)
                # Its own log-frequencies: categories it does not hold are never asked.
                p = np.log1p(counts)
                p /= p.sum()
                chosen = self.rng.choice(enc.width, size=len(picked), p=p)
                cond[picked, offset + chosen] = 1.0
                positions.append(picked)
                categories.append(chosen)
                if need_records:
                    by_category = {c: np.flatnonzero(codes == c) for c in np.unique(chosen)}
                    records.append(
                        np.array([self.rng.choice(by_category[c]) for c in chosen], np.int64)
                    )
            offset += enc.width
        cat = np.concatenate
        return (
            cond,
            cat(positions) if positions else np.zeros(0, np.int64),
            cat(categories) if categories else np.zeros(0, np.int64),
            cat(records) if records else np.zeros(0, np.int64),
        )

    def condition_loss(
        self, raw: torch.Tensor, owned: list[np.ndarray], categories: np.ndarray
    ) -> torch.Tensor:
        """CTGAN's cross-entropy of the generated one-hot of each row it conditioned."""
        loss = raw.new_zeros(())
        at = 0
        for (enc, start), picked in zip(self.categorical, owned, strict=True):
            if len(picked):
                logits = raw[torch.from_numpy(picked), start : start + enc.width]
                target = torch.from_numpy(categories[at : at + len(picked)])
                loss = loss + F.cross_entropy(logits, target, reduction="sum")
                at += len(picked)
        return loss / len(raw)


class VerticalTrainer:
    """Runs joint iterations of a ``VerticalCtganTask`` over the clients' column blocks."""

    def __init__(
        self,
        task: VerticalCtganTask,
        data: list[TableClientData],
        seeds: JointSeeds,
        channel: WireChannel,
        lr: float,
    ) -> None:
        p = task.params
        self.task, self.channel, self.p = task, channel, p
        self.body, self.top = task.modules[BODY], task.modules[TOP]
        adam: dict[str, Any] = {"lr": lr, "betas": p.betas, "weight_decay": p.weight_decay}
        self.opt_body = torch.optim.Adam(self.body.parameters(), **adam)
        self.opt_top = torch.optim.Adam(self.top.parameters(), **adam)
        self.parties = []
        for i, d in enumerate(data):
            head, bottom = task.modules[head_name(i)], task.modules[bottom_name(i)]
            party_ = _Party(
                i,
                d,
                head,
                bottom,
                task.party_spans(i),
                task.parties[i].categorical(),
                task.cond_width(i),
                np.random.default_rng(seeds.own[i]),
                p.batch_size,
                torch.optim.Adam(head.parameters(), **adam),
                torch.optim.Adam(bottom.parameters(), **adam),
            )
            self.parties.append(party_)
        self.num_records = data[0].num_examples
        # (client, its categorical column) of every categorical column, in client order.
        self.columns = [(q, j) for q in self.parties for j in range(len(q.categorical))]
        self.shared = np.random.default_rng(seeds.clients)
        self.noise = torch.Generator().manual_seed(seeds.server)

    def _owned(self, choice: np.ndarray) -> dict[int, list[np.ndarray]]:
        """Per client, per its categorical column, the batch positions that column conditions."""
        out: dict[int, list[np.ndarray]] = {q.cid: [] for q in self.parties}
        for k, (q, _) in enumerate(self.columns):
            out[q.cid].append(np.flatnonzero(choice == k))
        return out

    def _draw(self, need_records: bool) -> tuple[list[Any], np.ndarray | None, torch.Tensor]:
        """Steps 1-3: each client's conditions (and records); the server's conditional vector."""
        b = self.p.batch_size
        choice = self.shared.integers(len(self.columns), size=b) if self.columns else None
        owned = self._owned(choice) if choice is not None else {q.cid: [] for q in self.parties}
        drawn = [q.conditions(owned[q.cid], need_records) for q in self.parties]
        records = None
        if need_records:
            if not self.columns:
                records = self.shared.integers(self.num_records, size=b)
            else:
                # Each client assembles the batch's records from the ids the others send.
                views = []
                for q in self.parties:
                    view = np.zeros(b, np.int64)
                    for r, (_, pos_r, _, rec_r) in zip(self.parties, drawn, strict=True):
                        if r is q:
                            view[pos_r] = rec_r
                        elif len(rec_r):
                            got = self.channel.one(
                                r.name, q.name, "records", torch.from_numpy(rec_r)
                            )
                            view[pos_r] = got.numpy()
                    views.append(view)
                records = views[0]
                if any(not np.array_equal(v, records) for v in views):
                    raise RuntimeError("the clients assembled different record batches")
        parts = [
            self.channel.one(q.name, SERVER, "condition", d[0])
            for q, d in zip(self.parties, drawn, strict=True)
        ]
        cond = torch.cat(parts, dim=1) if parts else torch.zeros(b, 0)
        return [(owned[q.cid], d) for q, d in zip(self.parties, drawn, strict=True)], records, cond

    def critic_step(self) -> float:
        """One critic step (steps 1-6 of the module docstring); its Wasserstein loss."""
        loss_d = self.critic_gradients(self.critic_inputs())
        for q in self.parties:
            q.opt_bottom.step()
        self.opt_top.step()
        return loss_d

    def critic_inputs(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Steps 1-4 up to the critic blocks: each client's ``(real, fake, mixed)`` inputs
        ``(B, its encoded width + its condition width)``; they stay with the client."""
        p, b, pac = self.p, self.p.batch_size, self.p.pac
        drawn, records, cond = self._draw(need_records=True)
        assert records is not None
        perm = torch.from_numpy(self.shared.permutation(b))
        alpha = torch.from_numpy(self.shared.random(b // pac)).float()
        alpha = alpha.repeat_interleave(pac)[:, None]  # (B, 1): one weight per pack
        z = torch.randn(b, p.noise_dim, generator=self.noise)
        with torch.no_grad():
            h = self.body(z, cond)  # (B, body width), on the server
        rows = torch.from_numpy(records)[perm]
        inputs = []
        for q, (_, (cond_q, *_)) in zip(self.parties, drawn, strict=True):
            h_q = self.channel.one(SERVER, q.name, "hidden", h)
            with torch.no_grad():
                fake = apply_activations(q.head(h_q), q.spans, p.tau)
            fake_in = torch.cat([fake, cond_q], dim=1)
            real_in = torch.cat([q.data.encoded[rows], cond_q[perm]], dim=1)
            mixed = (alpha * real_in + (1 - alpha) * fake_in).requires_grad_(True)
            inputs.append((real_in, fake_in, mixed))
        return inputs

    def critic_gradients(
        self, inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> float:
        """Steps 4-6 without the optimizer steps: the critic's gradients (Wasserstein loss
        plus the exact gradient penalty) in the clients' blocks and the server's top."""
        b, pac = self.p.batch_size, self.p.pac
        sent: list[dict[str, torch.Tensor]] = []
        client_side = []
        for q, (real_in, fake_in, mixed) in zip(self.parties, inputs, strict=True):
            q.bottom.zero_grad(set_to_none=True)
            acts = {"real": q.bottom(real_in), "fake": q.bottom(fake_in), "mixed": q.bottom(mixed)}
            client_side.append((mixed, acts))
            got = self.channel.send(q.name, SERVER, acts)
            sent.append({k: v.requires_grad_(True) for k, v in got.items()})
        # The server: Wasserstein loss and the score's gradient at the mixed rows.
        self.top.zero_grad(set_to_none=True)
        loss_d = (
            self.top([s["fake"] for s in sent]).mean() - self.top([s["real"] for s in sent]).mean()
        )
        score_mix = self.top([s["mixed"] for s in sent])
        grads = torch.autograd.grad(score_mix.sum(), [s["mixed"] for s in sent], create_graph=True)
        squares, held = [], []
        for q, (mixed, acts), g in zip(self.parties, client_side, grads, strict=True):
            # The client: its part of the input gradient, as a function of what it got.
            g_q = self.channel.one(SERVER, q.name, "score_grad", g).requires_grad_(True)
            (grad_in,) = torch.autograd.grad(acts["mixed"], mixed, g_q, create_graph=True)
            square = grad_in.reshape(b // pac, -1).pow(2).sum(dim=1)  # (B / pac,)
            held.append((g_q, square))
            squares.append(
                self.channel.one(q.name, SERVER, "grad_square", square).requires_grad_(True)
            )
        # The norm over each pack's whole mixed row: the clients' squares summed.
        norm = torch.stack(squares).sum(dim=0).sqrt()
        penalty = ((norm - 1) ** 2).mean() * self.p.gp_weight
        (loss_d + penalty).backward()
        score_grads_back = []
        for q, (g_q, square), sq in zip(self.parties, held, squares, strict=True):
            d_square = self.channel.one(SERVER, q.name, "grad_square_grad", _grad(sq))
            square.backward(d_square, retain_graph=True)
            score_grads_back.append(self.channel.one(q.name, SERVER, "score_grad_grad", _grad(g_q)))
        torch.autograd.backward(list(grads), score_grads_back)
        for q, (_, acts), s in zip(self.parties, client_side, sent, strict=True):
            back = self.channel.send(SERVER, q.name, {k: _grad(v) for k, v in s.items()})
            torch.autograd.backward([acts[k] for k in acts], [back[k] for k in acts])
        return float(loss_d.detach())

    def generator_step(self) -> float:
        """One generator step (module docstring); its loss (adversarial + conditions)."""
        p, b = self.p, self.p.batch_size
        drawn, _, cond = self._draw(need_records=False)
        z = torch.randn(b, p.noise_dim, generator=self.noise)
        h = self.body(z, cond)  # on the server, with its graph
        client_side, sent = [], []
        condition_loss = 0.0
        for q, (owned, (cond_q, _, categories, _)) in zip(self.parties, drawn, strict=True):
            h_q = self.channel.one(SERVER, q.name, "hidden", h).requires_grad_(True)
            raw = q.head(h_q)
            fake = apply_activations(raw, q.spans, p.tau)
            act = q.bottom(torch.cat([fake, cond_q], dim=1))
            loss_q = q.condition_loss(raw, owned, categories) if owned else raw.new_zeros(())
            condition_loss += float(loss_q.detach())
            client_side.append((h_q, act, loss_q))
            sent.append(self.channel.one(q.name, SERVER, "fake", act).requires_grad_(True))
        loss_g = -self.top(sent).mean()
        loss_g.backward()  # the top's gradients are dropped: the critic step zeroes them
        hidden_grads = []
        for q, (h_q, act, loss_q), s in zip(self.parties, client_side, sent, strict=True):
            back = self.channel.one(SERVER, q.name, "fake_grad", _grad(s))
            q.head.zero_grad(set_to_none=True)
            if loss_q.requires_grad:
                torch.autograd.backward([act, loss_q], [back, torch.ones(())])
            else:  # it conditioned no row of this batch
                act.backward(back)
            q.opt_head.step()
            hidden_grads.append(self.channel.one(q.name, SERVER, "hidden_grad", _grad(h_q)))
        self.body.zero_grad(set_to_none=True)
        h.backward(torch.stack(hidden_grads).sum(dim=0))
        self.opt_body.step()
        return float(loss_g.detach()) + condition_loss

    def train(self, steps: int) -> dict[str, float]:
        """``steps`` joint iterations; mean losses."""
        for module in self.task.modules.values():
            module.train()
        totals = {"loss/generator": 0.0, "loss/critic": 0.0}
        # Dropout and the Gumbel-softmax draw from the global RNG: seed it in a fork.
        with global_rng_from(self.noise):
            for _ in range(steps):
                totals["loss/critic"] += self.critic_step()
                totals["loss/generator"] += self.generator_step()
        return {k: v / max(steps, 1) for k, v in totals.items()}
