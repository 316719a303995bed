"""Every table recipe trains, evaluates and draws its figure on its real table.

One short round each: the shapes these tables bring that fair and randhie do not (every
column categorical: titanic; 30 numeric columns and no silo column: breast_cancer; a
table of 297 rows: heart_disease) run through encoding, training, quality, TSTR, the
figure and the samples.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from fedgen.config import load_config
from fedgen.data.table_sources import ORANGE3, get_table_source
from fedgen.experiment import build_experiment, run_experiment
from fedgen.samples.table_figure import PANEL_H, PER_ROW

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = [
    "tabular_breast_cancer_tvae.yaml",
    "tabular_breast_cancer_ctgan.yaml",
    "tabular_heart_disease_tvae.yaml",
    "tabular_heart_disease_ctgan.yaml",
    "tabular_titanic_tvae.yaml",
    "tabular_titanic_ctgan.yaml",
]
SHORT = [
    "federation.rounds=1",
    "federation.local_steps=3",
    "eval.every=1",
    "eval.num_quality_samples=200",
    "eval.tstr_samples=300",
    "threads=1",
    "ledger=false",
]


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_table_recipe_trains_evaluates_and_draws_every_column(recipe, tmp_path):
    cfg = load_config(CONFIGS / recipe, SHORT)
    (name,) = cfg.data.sources
    source = get_table_source(name)
    if name in ("heart_disease", "titanic") and ORANGE3.locate() is None:
        pytest.skip(f"the orange3 wheel is missing; fetch it with: {ORANGE3.pip_command()}")
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "completed"
    assert 0 < summary["quality_score"] <= 1 and 0 <= summary["ml_efficacy"] <= 1
    # The samples are rows of the table's schema, the target among them.
    (rows_file,) = sorted((tmp_path / "run" / "samples").glob("*.csv"))
    with rows_file.open() as f:
        header = next(csv.reader(f))
    assert header == source.schema.names and source.target in header
    # The figure holds a panel per column and, with two or more numeric columns, both
    # correlation maps whole (8-pixel cells at 30 columns: 240 pixels a side).
    (figure,) = sorted((tmp_path / "run" / "samples").glob("*.png"))
    numeric = len(source.schema.names) - len(source.schema.categorical())
    panels = -(-len(source.schema.names) // PER_ROW) * PANEL_H
    height = Image.open(figure).size[1]
    assert height >= 24 + panels + (numeric * max(min(160 // numeric, 40), 8) if numeric > 1 else 0)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds"] == 1


def test_the_fedsgd_recipe_steps_adam_on_the_clients_mean_gradient(tmp_path):
    # configs/tabular_randhie_tvae_fedsgd.yaml: one SGD step at lr 1 per client, so the
    # mean update is minus the mean gradient, and the server's Adam takes the step. Its
    # first step moves every coordinate by at most server_lr (1 - beta1) / sqrt(1 - beta2)
    # (= 3.16e-3 here: m = 0.1 d, v = 0.001 d^2 + tau^2), and by nearly that wherever the
    # gradient is far above tau; a FedAvg step of lr 1 would move them by the gradient.
    cfg = load_config(CONFIGS / "tabular_randhie_tvae_fedsgd.yaml", SHORT[3:])
    exp = build_experiment(cfg)
    before = {k: v.clone() for k, v in exp.federation.global_state.items()}
    exp.federation.run_round(0)
    moves = torch.cat(
        [(exp.federation.global_state[k] - before[k]).abs().reshape(-1) for k in before]
    )
    bound = 1e-3 * 0.1 / 0.001**0.5
    assert float(moves.max()) <= bound * (1 + 1e-6)
    moved = moves[moves > 0]
    assert len(moved) > 0.9 * len(moves) and float(moved.median()) > 0.9 * bound
    summary = run_experiment(
        load_config(
            CONFIGS / "tabular_randhie_tvae_fedsgd.yaml", ["federation.rounds=3", *SHORT[2:]]
        ),
        tmp_path / "run",
        progress=False,
    )
    assert summary["status"] == "completed" and 0 < summary["quality_score"] <= 1
