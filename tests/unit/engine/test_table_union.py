"""The union of every client's rows from its own model (fedgen.engine.table_union): each
client draws its share with its own category counts, from its fine-tuned model, and the
run reports the union's figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgen.config import load_config
from fedgen.engine.table_union import row_shares, union_figures
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, make_evaluator, run_experiment

#: Titanic's class silos (4 clients, one status each), a tiny CTGAN, two short rounds.
TINY = [
    "task.params={batch_size: 100, pac: 10, hidden: 32, noise_dim: 16}",
    "federation.rounds=2",
    "federation.local_steps=3",
    "eval.every=0",
    "eval.num_quality_samples=200",
    "eval.tstr_samples=300",
    "eval.tstr_repeats=2",
    "threads=1",
]


def _cfg(*extra: str):
    return load_config("configs/tabular_titanic_ctgan.yaml", [*TINY, *extra])


def test_row_shares_split_rows_in_proportion_and_sum_to_the_total():
    assert row_shares(10, [1, 1, 2]) == [3, 2, 5]  # a tie goes to the lower client id
    assert row_shares(7, [5, 0, 5]) == [4, 0, 3]
    sizes = [885, 325, 285, 706]
    shares = row_shares(2000, sizes)
    assert sum(shares) == 2000
    assert all(abs(s - 2000 * n / sum(sizes)) < 1 for s, n in zip(shares, sizes, strict=True))
    with pytest.raises(ValueError, match="cannot share"):
        row_shares(5, [0, 0])


def test_each_client_draws_its_share_with_its_own_counts_from_its_fine_tuned_model():
    # Prepare: a trained silo federation and its evaluator.
    cfg = _cfg()
    exp = build_experiment(cfg)
    fed = exp.federation
    assert fed.run()
    evaluator = make_evaluator(cfg, exp.data, exp.task.modality)
    # The global model as evaluations load it (the strategy's moving average).
    task = fed.load_global_into_task()
    global_state = {k: v.clone() for k, v in task.federated_state().items()}
    calls: list[tuple[int, list[np.ndarray] | None, dict[str, torch.Tensor]]] = []
    original = task.sample_rows

    def spy(n, generator, *args):
        calls.append((n, task.generation_counts, task.federated_state()))
        return original(n, generator, *args)

    task.sample_rows = spy  # type: ignore[method-assign]
    # Execute
    figures = union_figures(fed, evaluator, finetune_steps=4, seed=0)
    # Assert: per client, one quality share and two TSTR shares, by its row count.
    clients = sorted(fed.clients.items())
    sizes = [c.num_examples for _, c in clients]
    quality, tstr = row_shares(200, sizes), row_shares(300, sizes)
    assert [n for n, _, _ in calls] == [
        n for q, t in zip(quality, tstr, strict=True) for n in (q, t, t)
    ]
    for i, (_, client) in enumerate(clients):
        for _, counts, state in calls[3 * i : 3 * i + 3]:
            # Its own category counts: the status it holds, and no other.
            own = [
                np.bincount(client.codes[enc.name], minlength=enc.width)
                for enc, _ in task.encoder.categorical()
            ]
            assert counts is not None
            assert all(np.array_equal(a, b) for a, b in zip(counts, own, strict=True))
            # Its fine-tuned model, not the global one.
            assert any(not torch.equal(state[k], global_state[k]) for k in global_state)
    # The union is measured like any table, and the global model is back after.
    assert 0 < figures["quality_score_union_finetuned"] <= 1
    assert 0 <= figures["ml_efficacy_union_finetuned"] <= 1
    assert "ml_efficacy_std_union_finetuned" in figures
    assert 0 <= figures["dcr_closer_to_train_union_finetuned"] <= 1
    assert task.generation_counts is None
    assert all(torch.equal(task.federated_state()[k], v) for k, v in global_state.items())


def test_a_run_reports_and_describes_the_union(tmp_path):
    cfg = _cfg("eval.per_client=true", "eval.personalize_steps=2")
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    assert 0 < summary["quality_score_union_finetuned"] <= 1
    assert summary["ml_efficacy_real_union_finetuned"] == summary["ml_efficacy_real"]
    assert "fine-tuned 2 local steps" in summary["descriptions"]["union_finetuned"]


def test_a_union_without_own_models_is_refused_with_what_to_set():
    with pytest.raises(ConfigError, match=r"set eval\.personalize_steps"):
        build_experiment(_cfg("eval.per_client=true"))
