"""Per-domain evaluation of a trained HuSCF-GAN federation (as the paper reports it).

In HuSCF-GAN (Tawfilis et al. 2025, arXiv 2507.12979) each cluster's generator
-- its clients' shared head and tail plus the server's middle -- generates its
own domain. For every source of the experiment this module takes a client of
that domain (``class_drop`` puts client ``i`` in domain ``i % D``), builds that
client's full generator (the global state with the client's private tensors on
top; the strategy's evaluation state for methods without private tensors),
and runs fedgen's ``Evaluator`` against that domain alone: a feature
classifier trained on the domain's training split (Frechet distance, KID,
inception-like score) and TSTR on the domain's real test split.

The round loop's own evaluation (``fedgen run``/``fedgen eval``) uses one
generator and the pooled test splits; this is the per-domain figure.
"""

from __future__ import annotations

from typing import Any

import torch

from fedgen.data.sources import get_source
from fedgen.engine.federation import Federation
from fedgen.eval.evaluator import Evaluator
from fedgen.experiment import Experiment
from fedgen.seeding import derive_seed, torch_generator
from fedgen.types import StateDict

PAPER_TSTR_SAMPLES = 29952  # 468 batches of 64, per domain


def client_generator_state(fed: Federation, client_id: int, averaged: bool = True) -> StateDict:
    """Client ``client_id``'s whole model: global state + its private tensors, if it has any,
    as the strategy evaluates them (e.g. their moving averages; ``averaged=False``: the
    weights as trained, for a side-by-side figure from the same run)."""
    private = fed.private_states.get(client_id, {})
    if not averaged:
        return {**fed.global_state, **private}
    if private:
        return fed.strategy.client_evaluation_state(client_id, fed.global_state, private)
    return fed.strategy.evaluation_state(fed.global_state)


def domain_clients(exp: Experiment) -> dict[str, int]:
    """``{source: id of the first client of that domain}`` (client ``i`` is in domain ``i % D``)."""
    sources = list(exp.config.data.sources)
    ids = sorted(exp.federation.clients)
    if len(ids) == 1:  # centralized: one client holds everything
        return dict.fromkeys(sources, ids[0])
    return {name: ids[d] for d, name in enumerate(sources)}


def evaluate_domains(
    exp: Experiment,
    tstr_samples: int = PAPER_TSTR_SAMPLES,
    tstr_epochs: int = 15,
    num_quality_samples: int = 2000,
    classifier_epochs: int = 1,
    averaged: bool = True,
    tstr_schedule: str = "cosine",
) -> dict[str, dict[str, Any]]:
    """``{source: figures}``: quality and TSTR of the domain's client generator on that domain."""
    cfg = exp.config
    fed = exp.federation
    task = fed.task
    out: dict[str, dict[str, Any]] = {}
    for name, cid in domain_clients(exp).items():
        source = get_source(name)
        train = source.load("train", cfg.data.data_dir)
        test = source.load("test", cfg.data.data_dir)
        evaluator = Evaluator(
            train,
            test,
            seed=derive_seed(cfg.seed, "eval", name) % (2**31),
            num_quality_samples=num_quality_samples,
            tstr_samples=tstr_samples,
            tstr_epochs=tstr_epochs,
            classifier_epochs=classifier_epochs,
            tstr_schedule=tstr_schedule,
        )
        task.load_state(client_generator_state(fed, cid, averaged))
        gen = torch_generator(cfg.seed, "domain-eval", name)

        def generate(labels: torch.Tensor, gen: torch.Generator = gen) -> torch.Tensor:
            return task.sample(labels, gen)

        figures: dict[str, Any] = evaluator.evaluate(generate, tstr=True)
        figures["client"] = cid
        figures["test_images"] = len(test)
        out[name] = figures
    return out
