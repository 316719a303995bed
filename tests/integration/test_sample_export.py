"""`fedgen sample --format png|npz|folder`: a labelled synthetic data set from a real
run's newest checkpoint, with a manifest naming that checkpoint; bad options are clear
one-line errors.

One tiny run serves every test; the command runs once end to end (npz), the other
layouts are written from the same loaded run, and options refused before the run is
loaded are checked in-process.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from cli_runner import fedgen
from PIL import Image
from tiny_federation import TINY_DPSGD, tiny_config
from typer.testing import CliRunner

from fedgen.cli import app
from fedgen.experiment import load_run, run_experiment
from fedgen.samples.export_format import ExportFormat
from fedgen.samples.image_dataset import export_image_dataset
from fedgen.seeding import torch_generator

PER_CLASS = 3
CLASSES = 10
LABELS = np.repeat(np.arange(CLASSES), PER_CLASS)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir) -> Path:
    """A finished one-round cGAN run of the tiny federation, without evaluation."""
    out = tmp_path_factory.mktemp("sample-export") / "run"
    cfg = tiny_config(
        mnist_dir,
        **{"federation.rounds": 1, "eval.every": 0, "eval.final": "false", "ledger": "false"},
    )
    run_experiment(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def task(run_dir):
    return load_run(run_dir).federation.load_global_into_task()


def check_manifest(path: Path, run_dir: Path, fmt: str) -> dict:
    manifest = json.loads(path.read_text())
    assert manifest["format"] == fmt and manifest["count"] == PER_CLASS * CLASSES
    return manifest


def test_the_command_exports_an_npz_and_names_the_checkpoint(run_dir, tmp_path):
    # Execute
    out = tmp_path / "synthetic"
    fedgen(
        "sample", str(run_dir), "--per-class", str(PER_CLASS), "--format", "npz", "--out", str(out)
    )

    # Assert: balanced labelled images, and the manifest's checkpoint is the file on disk.
    with np.load(out.with_suffix(".npz")) as data:
        assert data["images"].shape == (CLASSES * PER_CLASS, 1, 28, 28)
        assert data["images"].dtype == np.uint8 and data["images"].max() > 0
        assert (data["labels"] == LABELS).all()
        assert data["class_names"].tolist() == [str(i) for i in range(CLASSES)]
    manifest = check_manifest(out.with_suffix(".json"), run_dir, "npz")
    assert manifest["checkpoint_round"] == 0
    checkpoint = run_dir / "checkpoints" / manifest["checkpoint_file"]
    assert manifest["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert "privacy" not in manifest  # a run without DP claims none


def test_a_dp_runs_data_set_records_the_privacy_it_carries(mnist_dir, tmp_path):
    # Prepare: one round of the tiny federation under DP-SGD.
    run = tmp_path / "dp-run"
    cfg = tiny_config(
        mnist_dir,
        **{
            "federation.rounds": 1,
            "federation.local_steps": 1,
            "eval.every": 0,
            "eval.final": "false",
            "ledger": "false",
            **TINY_DPSGD,
        },
    )
    run_experiment(cfg, run, progress=False)
    # Execute
    result = CliRunner().invoke(
        app, ["sample", str(run), "--per-class", "1", "--format", "npz", "--out", str(run / "s")]
    )
    # Assert: the manifest carries the run's epsilon, as its metrics recorded it.
    assert result.exit_code == 0, result.output
    privacy = json.loads((run / "s.json").read_text())["privacy"]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert privacy["unit"] == "example" and privacy["delta"] == 1e-5
    assert privacy["epsilon"] == pytest.approx(last["epsilon"]) and privacy["epsilon"] > 0


def test_a_folder_per_class_with_labels_csv(task, run_dir, tmp_path):
    out = tmp_path / "synthetic"
    names = [f"class/{i}" for i in range(CLASSES)]  # a "/" must not make a sub-folder
    provenance = {"checkpoint_round": 0}

    export_image_dataset(
        task, out, PER_CLASS, ExportFormat.FOLDER, torch_generator(0, "t"), names, provenance
    )

    with (out / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["label"]) for r in rows] == LABELS.tolist()
    for row in rows:
        assert row["file"].startswith(f"{row['label']}_class_{row['label']}/")
        with Image.open(out / row["file"]) as image:
            assert image.size == (28, 28) and image.mode == "L"
    assert check_manifest(out / "manifest.json", run_dir, "folder")["checkpoint_round"] == 0


def test_a_png_grid_with_one_row_per_class(task, run_dir, tmp_path):
    names = [str(i) for i in range(CLASSES)]
    grid, manifest = export_image_dataset(
        task, tmp_path / "g", PER_CLASS, ExportFormat.PNG, torch_generator(0, "t"), names, {}
    )
    with Image.open(grid) as image:
        assert image.size == ((PER_CLASS * 30 + 2) * 2, (CLASSES * 30 + 2) * 2)
    check_manifest(manifest, run_dir, "png")


def test_a_folder_export_never_writes_into_a_non_empty_folder(task, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="non-empty folder"):
        export_image_dataset(
            task, tmp_path, 1, ExportFormat.FOLDER, torch_generator(0, "t"), ["a"] * 10, {}
        )
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--format", "zip"], "'zip' is not one of 'png', 'npz', 'folder'"),
        (["--format", "npz", "--prompt", "Once"], "drop --prompt and --condition"),
        (["--format", "npz", "--per-class", "0"], "--per-class"),
    ],
)
def test_bad_options_are_clear_errors(extra, says, run_dir, tmp_path):
    result = CliRunner().invoke(app, ["sample", str(run_dir), *extra, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert says in " ".join(result.output.split())
    assert not list(tmp_path.iterdir())
