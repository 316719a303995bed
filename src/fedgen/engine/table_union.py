"""A federated table as its clients would release it: the union of every client's
rows, each drawn from the client's own model.

FedAvg leaves one global table model. When clients are silos (one value of a column
each), a synthetic table can also be released the way the data is held: each client
draws its share of the rows (in proportion to its row count) from its own model, with
conditional vectors drawn by its own category counts (``TableTask.own_frequencies``),
and the shares are concatenated. A client's own model is its personal one (Ditto, or
private tensors) or the global model fine-tuned ``eval.personalize_steps`` steps on its
own rows after the last round (its kept optimizer state resumed): personalization in
the sense of FedAvg + local fine-tuning.

The union is measured like any synthetic table (``TableEvaluator``: quality report,
TSTR, DCR against the holdout), keyed ``<figure>_union_<model>``. The DCR figures say
whether a model fine-tuned on one client's rows copies them.

Runs in the simulation's server process, which holds every client's rows; in a
deployment each client would draw and publish its own share. Table tasks refuse DP, so
nothing here is charged to a privacy budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fedgen.engine.client_models import load_client_model, union_models
from fedgen.engine.federation import Federation
from fedgen.seeding import torch_generator
from fedgen.tasks.tabular.base import TableTask


def row_shares(total: int, sizes: list[int]) -> list[int]:
    """``total`` rows split in proportion to ``sizes`` (largest remainders; sums to total)."""
    weights = np.asarray(sizes, dtype=np.float64)
    if total < 0 or weights.sum() <= 0:
        raise ValueError(f"cannot share {total} rows over clients of sizes {sizes}")
    exact = weights * total / weights.sum()
    shares = np.floor(exact).astype(np.int64)
    # Stable order: equal remainders go to the lower client id, the same every run.
    extra = np.argsort(-(exact - shares), kind="stable")[: total - int(shares.sum())]
    shares[extra] += 1
    return [int(s) for s in shares]


def union_figures(
    fed: Federation, evaluator: Any, *, finetune_steps: int, seed: int
) -> dict[str, float]:
    """The evaluator's final figures of each union (see the module docstring), keyed
    ``<figure>_union_<model>``; the global model is loaded again after."""
    task = fed.task
    if not isinstance(task, TableTask):
        raise TypeError(f"the union of clients' rows needs a table task, not {type(task).__name__}")
    clients = sorted(fed.clients.items())
    sizes = [data.num_examples for _, data in clients]
    quality = row_shares(evaluator.quality_rows, sizes)
    tstr = row_shares(evaluator.tstr_rows, sizes)
    repeats = evaluator.tstr_repeats
    figures: dict[str, float] = {}
    try:
        for model in union_models(fed, finetune_steps):
            shown: list[pd.DataFrame] = []
            draws: list[list[pd.DataFrame]] = [[] for _ in range(repeats)]
            for (cid, data), n_quality, n_tstr in zip(clients, quality, tstr, strict=True):
                load_client_model(fed, cid)
                if model == "finetuned":
                    task.fine_tune(data, finetune_steps, torch_generator(seed, "finetune", cid))
                gen = torch_generator(seed, "union-samples", model, cid)
                # Every client of a row-federated table holds TableClientData (its codes).
                with task.own_frequencies(data.codes):  # type: ignore[attr-defined]
                    shown.append(task.sample_rows(n_quality, gen))
                    for parts in draws:
                        parts.append(task.sample_rows(n_tstr, gen))
            union = evaluator.evaluate_table(
                pd.concat(shown, ignore_index=True),
                final=True,
                tstr_synthetic=[pd.concat(parts, ignore_index=True) for parts in draws],
            )
            figures.update({f"{key}_union_{model}": value for key, value in union.items()})
    finally:
        fed.load_global_into_task()
    return figures


def describe_union(finetune_steps: int) -> dict[str, str]:
    """What the union keys of ``summary.json`` mean (beside the evaluator's own keys)."""
    return {
        "union_personal": "figures suffixed _union_personal: the table made of every "
        "client's share of the rows (by its row count) drawn from its personal model "
        "(Ditto or private tensors) with its own category counts",
        "union_finetuned": "figures suffixed _union_finetuned: the same, each client's "
        f"model being the final global model fine-tuned {finetune_steps} local steps on "
        "its own rows after the last round",
    }
