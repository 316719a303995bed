"""``eval.model`` beyond the run itself: every evaluated round records which model it
showed, the report names it, and ``fedgen sample`` (grids and ``--format`` exports),
``fedgen eval`` and the downstream classifier's generator draw from the model the run's
own evaluations showed unless told otherwise.

One tiny real FedPer run serves every test: MNIST, 4 Dirichlet clients of unequal sizes,
2 of them a round, so the largest client that has trained changes between the two
evaluated rounds (seed 1: clients 0 and 3 train first, then 0 and 1; client 1 is the
largest, client 2 never trains).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_federation import tiny_config
from typer.testing import CliRunner

from fedgen.cli import app
from fedgen.downstream import run_downstream
from fedgen.downstream.errors import DownstreamError
from fedgen.downstream.generator_run import open_generator_run
from fedgen.experiment import load_run, run_experiment

#: The generator's class embedding and output layer stay with each client (FedPer), so
#: the global model alone samples with their initial values.
FEDPER = (
    "{batch_size: 16, generator_width: 8, discriminator_width: 8, "
    "personal: [generator.embed, generator.body.5, discriminator.embed, discriminator.head]}"
)
OVERRIDES = {
    "seed": 1,
    "federation.rounds": 2,
    "task.params": FEDPER,
    "data.partition.kind": "dirichlet",
    "data.partition.params": "{alpha: 0.5, min_size: 20}",
    "strategy.params": "{fraction: 0.5, min_clients: 2}",
    "eval.every": 1,
    "eval.num_quality_samples": 50,
    "eval.tstr_samples": 50,
    "eval.tstr_epochs": 1,
    "eval.grid_per_class": 1,
    "ledger": "false",
}
LARGEST = 1  # the largest client (3,461 examples), trained in round 1
FIRST = 0  # the largest of the clients that trained in round 0
NEVER = 2  # never sampled into a round


def _config(mnist_dir: Path, **extra: object):
    return tiny_config(mnist_dir, **{**OVERRIDES, **extra})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("eval-model") / "run"
    run_experiment(_config(mnist_dir), out, progress=False)
    return out


def _sample(run_dir: Path, out: Path, *extra: str):
    return CliRunner().invoke(
        app, ["sample", str(run_dir), "--n", "2", "--seed", "3", "--out", str(out), *extra]
    )


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_every_evaluated_round_records_the_model_it_showed(run_dir):
    # Prepare: who trained in each round, and each client's size.
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sizes = {cid: c.num_examples for cid, c in load_run(run_dir).federation.clients.items()}
    trained: set[int] = set()
    # Assert: each round names the largest client among those that trained so far; here
    # the choice moves from client 0 to client 1.
    for row in rows:
        trained |= set(row["bytes_by_client"]["clients"])
        largest = max(trained, key=lambda c: (sizes[c], -c))
        assert row["evaluated_model"] == f"client {largest}"
    assert [row["evaluated_model"] for row in rows] == [f"client {FIRST}", f"client {LARGEST}"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["evaluated_model"].startswith(f"client {LARGEST}'s own model")


def test_the_report_names_the_model_each_grid_was_drawn_with(run_dir):
    page = (run_dir / "report.html").read_text()
    # The newest grid at the top, and round 0's grid below, each with its own client.
    assert f"round 1 (the newest), drawn with client {LARGEST}&#x27;s own model" in page
    assert f"round 0</strong> · client {FIRST}&#x27;s own model · round_0000.png" in page
    assert "the global model" not in page.split("<h2>Figures")[0]


def test_sample_draws_the_model_the_run_evaluated_unless_told(run_dir, tmp_path):
    # Execute: the default, the largest client's own by id, and the global model.
    default = _sample(run_dir, tmp_path / "default.png")
    own = _sample(run_dir, tmp_path / "own.png", "--client", str(LARGEST))
    global_ = _sample(run_dir, tmp_path / "global.png", "--model", "global")
    # Assert: the default is the client summary.json names, and says so on stderr.
    for result in (default, own, global_):
        assert result.exit_code == 0, result.output
    assert f"sampling client {LARGEST}'s own model (the run's eval.model)" in default.stderr
    assert np.array_equal(_pixels(tmp_path / "default.png"), _pixels(tmp_path / "own.png"))
    assert not np.array_equal(_pixels(tmp_path / "default.png"), _pixels(tmp_path / "global.png"))


def test_export_manifest_names_the_model_and_follows_the_run(run_dir, tmp_path):
    # Execute
    for name, extra in (("default", []), ("own", ["--client", str(LARGEST)])):
        result = _sample(run_dir, tmp_path / name, "--format", "npz", *extra)
        assert result.exit_code == 0, result.output
    result = _sample(run_dir, tmp_path / "global", "--format", "npz", "--model", "global")
    assert result.exit_code == 0, result.output
    # Assert: the same images as the client's own; the manifest says whose.
    with np.load(tmp_path / "default.npz") as a, np.load(tmp_path / "own.npz") as b:
        assert np.array_equal(a["images"], b["images"])
    manifest = json.loads((tmp_path / "default.npz.json").read_text())
    assert manifest["client"] == LARGEST and manifest["model"] == f"client {LARGEST}"
    manifest = json.loads((tmp_path / "global.npz.json").read_text())
    assert manifest["client"] is None and manifest["model"] == "global"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--client", str(NEVER)], f"client {NEVER} has no model of its own: it never trained"),
        (["--client", str(NEVER)], "--model global"),
        (["--client", "9"], "no client 9 in this run"),
        (["--client", str(LARGEST), "--model", "global"], "give one of them"),
        (["--model", "best"], "'best' is not one of"),
    ],
)
def test_a_model_that_cannot_be_sampled_is_a_clear_error(run_dir, tmp_path, extra, says):
    result = _sample(run_dir, tmp_path / "x.png", *extra)
    assert result.exit_code == 2
    assert says in " ".join(result.output.split())
    assert not (tmp_path / "x.png").exists()


def test_sample_and_eval_take_the_union_of_the_clients_own_models(run_dir, tmp_path):
    # Execute: the union exported and evaluated; the global model exported beside it.
    union = _sample(run_dir, tmp_path / "union", "--format", "npz", "--model", "union")
    global_ = _sample(run_dir, tmp_path / "global", "--format", "npz", "--model", "global")
    evaluated = CliRunner().invoke(app, ["eval", str(run_dir), "--model", "union"])
    # Assert: clients 0, 1 and 3 trained, so three own models; the manifest and eval.json
    # name the union; its images are its own, with every class's labels.
    for result in (union, global_, evaluated):
        assert result.exit_code == 0, result.output
    assert "sampling the union of 3 clients' own models" in union.stderr
    manifest = json.loads((tmp_path / "union.npz.json").read_text())
    assert manifest["client"] is None
    assert manifest["model"] == "union of 3 clients' own models"
    with np.load(tmp_path / "union.npz") as a, np.load(tmp_path / "global.npz") as b:
        assert np.array_equal(a["labels"], b["labels"])
        assert not np.array_equal(a["images"], b["images"])
    figures = json.loads((run_dir / "eval.json").read_text())
    assert figures["evaluated_model"] == "union of 3 clients' own models"
    assert 0 <= figures["tstr_accuracy"] <= 1


def test_the_union_and_one_client_cannot_both_be_asked_for(run_dir, tmp_path):
    result = _sample(run_dir, tmp_path / "x.png", "--model", "union", "--client", "1")
    assert result.exit_code == 2
    assert "--client 1 and --model union each choose a model" in " ".join(result.output.split())


def test_eval_records_the_model_and_takes_model_global(run_dir):
    # Execute
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--model", "global"])
    # Assert
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "eval.json").read_text())["evaluated_model"] == "global"


def test_the_downstream_generator_is_the_model_the_run_evaluated(run_dir, mnist_dir, tmp_path):
    # Prepare: a downstream recipe on the finished run.
    section = (
        "{modes: [synthetic], server_samples_per_class: 5, server_epochs: 1, "
        "test_examples: 50, attack_candidates: 10}"
    )
    cfg = _config(mnist_dir, downstream=section, **{"downstream.generator_run": str(run_dir)})
    # Execute / Assert: by default its samples come from the largest client's own model...
    generator = open_generator_run(run_dir, cfg)
    assert generator.client == LARGEST and generator.model == f"client {LARGEST}"
    own = generator.experiment.federation.private_states[LARGEST]
    loaded = generator.task.private_state()
    for key, value in own.items():
        assert torch.equal(loaded[key], value), key
    # ...and downstream.generator_model: global draws from the global model.
    told = _config(
        mnist_dir,
        downstream=section,
        **{"downstream.generator_run": str(run_dir), "downstream.generator_model": "global"},
    )
    assert open_generator_run(run_dir, told).client is None
    # The arms' record names the model they drew from.
    run_downstream(cfg, tmp_path / "downstream", progress=False)
    record = json.loads((tmp_path / "downstream" / "downstream.json").read_text())
    assert record["generator_model"] == f"client {LARGEST}"


@pytest.fixture(scope="module")
def union_dir(tmp_path_factory, mnist_dir) -> Path:
    """The same run with ``eval.model: union``: every evaluation draws from the union."""
    out = tmp_path_factory.mktemp("eval-model-union") / "run"
    run_experiment(_config(mnist_dir, **{"eval.model": "union"}), out, progress=False)
    return out


def test_a_union_run_evaluates_and_draws_its_grids_from_the_union(union_dir):
    # Prepare
    rows = [json.loads(x) for x in (union_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((union_dir / "summary.json").read_text())
    page = (union_dir / "report.html").read_text()
    # Assert: round 0's union has the two clients that trained (0 and 3), round 1's three
    # (client 1 joins); the summary, the report and the grids say so.
    assert [row["evaluated_model"] for row in rows] == [
        "union of 2 clients' own models",
        "union of 3 clients' own models",
    ]
    assert summary["evaluated_model"].startswith("the union of 3 clients' own models")
    assert "round 1 (the newest), drawn with the union of 3 clients&#x27; own models" in page
    assert (union_dir / "samples" / "round_0001.png").exists()


def test_eval_of_a_union_run_repeats_its_final_figures(union_dir):
    # Execute: fedgen eval follows the run's eval.model, seeded as the run's last evaluation.
    result = CliRunner().invoke(app, ["eval", str(union_dir)])
    # Assert: the same union, the same images, the same figures.
    assert result.exit_code == 0, result.output
    figures = json.loads((union_dir / "eval.json").read_text())
    summary = json.loads((union_dir / "summary.json").read_text())
    assert figures["evaluated_model"] == "union of 3 clients' own models"
    for key in ("frechet_distance", "precision", "recall", "tstr_accuracy"):
        assert figures[key] == pytest.approx(summary[key]), key


def test_sample_of_a_union_run_follows_it_unless_told(union_dir, tmp_path):
    # Execute: the run's own choice, then one client's model by id.
    followed = _sample(union_dir, tmp_path / "union", "--format", "npz")
    one = _sample(union_dir, tmp_path / "one", "--format", "npz", "--client", str(LARGEST))
    # Assert
    assert followed.exit_code == 0 and one.exit_code == 0, followed.output + one.output
    assert "sampling the union of 3 clients' own models" in followed.stderr
    assert json.loads((tmp_path / "union.npz.json").read_text())["model"].startswith("union of 3")
    assert json.loads((tmp_path / "one.npz.json").read_text())["client"] == LARGEST


def test_the_downstream_generator_of_a_union_run_must_be_named(union_dir, mnist_dir):
    # Prepare: a downstream recipe that follows the run's choice, a union.
    cfg = _config(
        mnist_dir,
        downstream="{modes: [synthetic]}",
        **{"downstream.generator_run": str(union_dir)},
    )
    # Execute / Assert: refused with the settings that work.
    with pytest.raises(DownstreamError, match=r"set downstream\.generator_model to largest_client"):
        open_generator_run(union_dir, cfg)
