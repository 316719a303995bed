"""TVAE: a variational autoencoder over mode-specifically normalized rows.

Xu, Skoularidou, Cuesta-Infante and Veeramachaneni, "Modeling Tabular data using
Conditional GAN", NeurIPS 2019, section 4 (TVAE); the same networks as the
``ctgan`` library's ``TVAE``: an encoder of two ReLU layers to a Gaussian latent,
a decoder of two ReLU layers back to the encoded row, and a learned standard
deviation per output for the offsets of numeric columns. The loss is the
reconstruction (Gaussian for offsets, cross-entropy for one-hots), weighted by
``loss_factor``, plus the KL divergence to the standard normal prior. Generated rows
draw every part from the decoder's likelihood: the offsets from their Gaussians (as
the library does) and, by default, the categories and modes from their softmax (the
library takes their argmax; ``categories: argmax`` does too).

``condition_on`` names a categorical column the decoder is also given (a conditional
VAE, Sohn et al. 2015): the decoder reads the latent and that column's one-hot, which
it reads from the encoded row in training and draws from the column's pooled category
counts (the encoder's, fitted from client statistics) when generating. It may name two
columns (a silo column and the target), drawn jointly from their pooled joint counts. Under label
skew of that column across clients, each client's decoder then learns the other
columns *given* the category rather than folding the category into its own latent
space, so averaging decoders does not blend one client's categories into another's
(as the class-conditional image models do).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedgen.data.table_data import TableClientData
from fedgen.data.table_encoder import Span
from fedgen.registry import TASKS
from fedgen.tasks.tabular.base import TableTask, TableTaskParams
from fedgen.tasks.tabular.condition_block import condition_block, with_condition
from fedgen.tasks.tabular.optimizer_state import FunctionalAdams
from fedgen.tasks.tabular.tvae_functional import (
    SIGMA_RANGE,
    RowReconstruction,
    TvaeFunctionalTraining,
    row_kl,
)


class _Decoder(nn.Module):
    def __init__(self, latent: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out = nn.Linear(hidden, dim)
        # Per-output standard deviation of the offsets' Gaussian likelihood (TVAE: 0.1).
        self.sigma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(z))  # (B, dim)


class _Encoder(nn.Module):
    def __init__(self, dim: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return self.mu(h), self.logvar(h)  # each (B, latent)


@TASKS.register("tvae")
class TvaeTask(TableTask):
    """TVAE (see module docstring); both networks are federated."""

    task_name = "tvae"

    class Params(TableTaskParams):
        """``task.params`` of ``tvae`` (defaults: the ``ctgan`` library's TVAE)."""

        lr: float = Field(1e-3, gt=0)
        latent_dim: int = Field(128, ge=1)
        hidden: int = Field(128, ge=1)
        loss_factor: float = Field(2.0, gt=0)
        weight_decay: float = Field(1e-5, ge=0)
        #: Adam's betas: torch's defaults, as the ctgan library's TVAE trains (the GAN
        #: tasks' 0.5 would not be the library's).
        betas: tuple[float, float] = (0.9, 0.999)
        #: How a generated row's categories (and modes) are read from the decoder's
        #: logits: ``sample`` draws them from the softmax (the model's own likelihood, as
        #: the offsets are drawn from theirs); ``argmax`` takes the most likely, as the
        #: ctgan library does, which loses rare categories until the latent separates them.
        categories: Literal["sample", "argmax"] = "sample"
        #: A categorical column the decoder is conditioned on, or two drawn jointly
        #: (see the module docstring); None: an unconditional TVAE, as the library's.
        condition_on: str | list[str] | None = None

    params: Params

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"vae": ["encoder", "decoder"]}

    def build(self) -> dict[str, nn.Module]:
        p, dim = self.params, self.encoder.dim
        self.reconstruction = RowReconstruction(self.spans, dim)
        self.condition = condition_block(self.encoder, p.condition_on)
        width = 0 if self.condition is None else self.condition.width
        return {
            "encoder": _Encoder(dim, p.hidden, p.latent_dim),
            "decoder": _Decoder(p.latent_dim + width, p.hidden, dim),
        }

    def _decoder(self) -> _Decoder:
        decoder = self.modules["decoder"]
        assert isinstance(decoder, _Decoder)
        return decoder

    def loss(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and KL terms (each a mean over the batch) of encoded rows ``x``,
        reparameterised with the standard normal noise ``eps (B, latent)``."""
        mu, logvar = self.modules["encoder"](x)
        z = mu + eps * torch.exp(0.5 * logvar)
        decoder = self._decoder()
        recon = self.reconstruction(decoder(with_condition(z, x, self.condition)), x, decoder.sigma)
        return recon.mean(), row_kl(mu, logvar).mean()

    def functional_training(self) -> TvaeFunctionalTraining | None:
        """``train_local``'s iteration as a pure function (the vectorized backend's), its
        Adam's moments and step count kept between rounds as ``train_local`` keeps them;
        None with ``local_optimizer: sgd``."""
        if self.params.local_optimizer != "adam":
            return None  # see why_no_functional_training
        p = self.params
        adams = FunctionalAdams(
            self.optimizer_groups(),
            keep=p.keep_optimizer,
            betas=p.betas,  # as train_local's optimizer
            weight_decay=p.weight_decay,
        )
        return TvaeFunctionalTraining(
            self.modules["encoder"],
            self.modules["decoder"],
            reconstruction=self.reconstruction,
            latent_dim=p.latent_dim,
            lr=p.lr,
            adams=adams,
            loss_factor=p.loss_factor,
            condition=self.condition,
        )

    def train_local(
        self, data: Any, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        assert isinstance(data, TableClientData)
        p = self.params
        lr = float(config.get("lr", p.lr))
        opt = self.make_optimizer("vae", lr=lr, weight_decay=p.weight_decay, betas=p.betas)
        for m in self.modules.values():
            m.train()
        batches = data.batches(p.batch_size, generator)
        totals = {"loss/reconstruction": 0.0, "loss/kl": 0.0}
        for _ in range(steps):
            x, _ = next(batches)
            # The client's own noise, drawn after its batch (the functional step's order).
            eps = torch.randn((x.shape[0], p.latent_dim), generator=generator)
            recon, kl = self.loss(x, eps)
            opt.zero_grad()
            (p.loss_factor * recon + kl).backward()
            opt.step()
            with torch.no_grad():
                self._decoder().sigma.clamp_(*SIGMA_RANGE)
            totals["loss/reconstruction"] += recon.item()
            totals["loss/kl"] += kl.item()
        self.keep_optimizer("vae", opt)
        return {k: v / max(steps, 1) for k, v in totals.items()}

    def generate(
        self, n: int, generator: torch.Generator, condition: tuple[int, int] | None
    ) -> torch.Tensor:
        decoder = self._decoder()
        z = torch.randn(n, self.params.latent_dim, generator=generator)
        block = self.condition
        given = None if block is None else block.draw(n, generator, condition)
        latent = z if given is None else torch.cat([z, given], dim=1)
        rows = draw_rows(
            decoder(latent), self.spans, decoder.sigma, generator, self.params.categories
        )
        if block is not None and given is not None:
            # The conditioning columns hold the categories the rows were generated for.
            block.write(rows, given)
        return rows


def draw_rows(
    out: torch.Tensor,
    spans: list[Span],
    sigma: torch.Tensor,
    generator: torch.Generator,
    categories: Literal["sample", "argmax"],
) -> torch.Tensor:
    """Encoded rows ``(B, dim)`` drawn from TVAE decoder outputs ``out (B, dim)``: each
    offset from its Gaussian ``tanh(out) + sigma * noise`` (not only its mean, as TVAE
    does), each one-hot drawn from its softmax (``categories: sample``) or left as logits
    for decoding to take the argmax (``argmax``)."""
    parts = []
    for span in spans:
        block = out[:, span.start : span.start + span.width]
        if span.activation == "tanh":
            noise = torch.randn(block.shape, generator=generator)
            parts.append(torch.tanh(block) + noise * sigma[span.start : span.start + span.width])
        elif categories == "argmax":
            parts.append(block)  # decoding takes the argmax
        else:
            drawn = torch.multinomial(torch.softmax(block, dim=1), 1, generator=generator)
            parts.append(F.one_hot(drawn[:, 0], block.shape[1]).float())
    return torch.cat(parts, dim=1)
