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
import torch
from cli_runner import fedgen
from PIL import Image
from tiny_federation import TINY_DPSGD, tiny_config
from typer.testing import CliRunner

from fedgen.cli import app
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, load_run, run_experiment
from fedgen.samples import image_dataset
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
    manifest = check_manifest(out.with_suffix(".npz.json"), run_dir, "npz")
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
    privacy = json.loads((run / "s.npz.json").read_text())["privacy"]
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


def invoke(run_dir: Path, *args: str):
    """`fedgen sample RUN_DIR ARGS` in-process (the run is loaded in about a second)."""
    return CliRunner().invoke(app, ["sample", str(run_dir), *args])


def assert_one_line_error(result, *says: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    text = " ".join(result.output.split())
    assert text.startswith("error: ") and all(s in text for s in says), text


@pytest.mark.parametrize(
    ("fmt", "out"),
    [
        ([], "afile/x"),
        (["--format", "npz"], "afile/x"),
        (["--format", "png"], "afile/x"),
        (["--format", "folder"], "afile"),
    ],
)
def test_an_out_on_or_under_a_file_is_a_one_line_error(fmt, out, run_dir, tmp_path):
    (tmp_path / "afile").write_text("mine")

    result = invoke(run_dir, *fmt, "--per-class", "1", "--out", str(tmp_path / out))

    assert_one_line_error(result, str(tmp_path / "afile"), "is a file", "--out")
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]
    assert (tmp_path / "afile").read_text() == "mine"


def test_out_dot_exports_into_the_current_folder(run_dir, tmp_path, monkeypatch):
    # ``--out .`` has no name of its own (a ValueError traceback before).
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)

    result = invoke(run_dir, "--format", "folder", "--per-class", "1", "--out", ".")

    assert result.exit_code == 0, result.output
    assert (here / "labels.csv").is_file() and (here / "manifest.json").is_file()
    # A file format into a folder: its default name inside it, nothing beside it.
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    result = invoke(run_dir, "--format", "npz", "--per-class", "1", "--out", ".")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in other.iterdir()) == ["samples.npz", "samples.npz.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "other"]
    manifest = json.loads((other / "samples.npz.json").read_text())
    assert manifest["checkpoint_file"] == "round_0000.ckpt"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--per-class", "100000000"], "grids stop at 100 megapixels"),
        (["--per-class", "100000000", "--format", "png"], "grids stop at 100 megapixels"),
        # 10**13 per class: petabytes, more than any disk this runs on.
        (["--per-class", str(10**13), "--format", "npz"], "on disk (uncompressed)"),
        (["--per-class", str(10**13), "--format", "folder"], "on disk (uncompressed)"),
    ],
)
def test_a_size_past_memory_or_disk_is_refused_before_drawing(args, says, run_dir, tmp_path):
    result = invoke(run_dir, *args, "--out", str(tmp_path / "big"))

    assert_one_line_error(result, says, "--per-class")
    assert not list(tmp_path.iterdir())


def test_npz_and_folder_stream_in_batches_to_the_same_data_set(task, tmp_path, monkeypatch):
    names = [str(i) for i in range(CLASSES)]
    for fmt in (ExportFormat.NPZ, ExportFormat.FOLDER):
        # Prepare: one batch, then batches of 7 that cut across classes (30 images).
        whole, _ = export_image_dataset(
            task, tmp_path / f"whole-{fmt}", PER_CLASS, fmt, torch_generator(0, "t"), names, {}
        )
        monkeypatch.setattr(image_dataset, "BATCH", 7)
        # Execute
        streamed, manifest = export_image_dataset(
            task, tmp_path / f"streamed-{fmt}", PER_CLASS, fmt, torch_generator(0, "t"), names, {}
        )
        monkeypatch.undo()
        # Assert: the same draws and labels; no partial file left behind.
        if fmt is ExportFormat.NPZ:
            with np.load(whole) as a, np.load(streamed) as b:
                assert a.files == b.files == ["images", "labels", "class_names"]
                assert all((a[k] == b[k]).all() for k in a.files)
                assert (b["labels"] == LABELS).all()
        else:
            assert (whole / "labels.csv").read_text() == (streamed / "labels.csv").read_text()
            for png in whole.glob("*/*.png"):
                assert png.read_bytes() == (streamed / png.relative_to(whole)).read_bytes()
        assert json.loads(manifest.read_text())["image_shape"] == [1, 28, 28]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_npz_and_png_keep_their_own_manifests_and_never_overwrite(run_dir, tmp_path):
    out = tmp_path / "s1"
    # Execute: npz then png to one --out, each manifest its own file.
    assert invoke(run_dir, "--per-class", "1", "--format", "npz", "--out", str(out)).exit_code == 0
    assert invoke(run_dir, "--per-class", "1", "--format", "png", "--out", str(out)).exit_code == 0
    # Assert
    assert json.loads((tmp_path / "s1.npz.json").read_text())["format"] == "npz"
    assert json.loads((tmp_path / "s1.png.json").read_text())["format"] == "png"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for fmt in ("npz", "png"):
        result = invoke(run_dir, "--per-class", "1", "--format", fmt, "--out", str(out))
        assert_one_line_error(result, f"{out}.{fmt} exists", "never overwrites", "--out")
        assert f"{out}-2" in result.output
    # A manifest alone (its data set moved away) is not overwritten either.
    (tmp_path / "s1.npz").unlink()
    del before["s1.npz"]
    result = invoke(run_dir, "--per-class", "1", "--format", "npz", "--out", str(out))
    assert_one_line_error(result, "s1.npz.json (the manifest this export would write) exists")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_npz_beside_a_run_summary_leaves_summary_json_alone(run_dir, tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text('{"status": "completed"}')

    result = invoke(
        run_dir, "--per-class", "1", "--format", "npz", "--out", str(tmp_path / "summary")
    )

    assert result.exit_code == 0, result.output
    assert summary.read_text() == '{"status": "completed"}'
    assert json.loads((tmp_path / "summary.npz.json").read_text())["format"] == "npz"


def test_best_of_exports_the_discriminators_favourites_and_says_so(run_dir, task, tmp_path):
    # Execute: the same seed, plain draws and the best of 4 (in-process)
    images = {}
    for m in (1, 4):
        out = tmp_path / f"best{m}"
        args = ["--per-class", str(PER_CLASS), "--format", "npz", "--best-of", str(m)]
        result = invoke(run_dir, *args, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert check_manifest(out.with_suffix(".npz.json"), run_dir, "npz")["best_of"] == m
        with np.load(out.with_suffix(".npz")) as data:
            images[m] = torch.from_numpy(data["images"]).float() / 255
    # Assert: the discriminator scores the kept images higher than plain draws.
    labels = torch.from_numpy(LABELS)
    with torch.no_grad():
        score = {
            m: task.modules["discriminator"](x * 2 - 1, labels).mean() for m, x in images.items()
        }
    assert score[4] > score[1]


def test_best_of_needs_a_task_that_scores_its_samples(mnist_dir):
    cfg = tiny_config(
        mnist_dir, **{"task.name": "cvae", "task.params": "{batch_size: 16}", "eval.best_of": 2}
    )
    with pytest.raises(ConfigError, match=r"eval\.best_of=2: ConditionalVae has no scorer"):
        build_experiment(cfg)


@pytest.mark.parametrize("fmt", [ExportFormat.NPZ, ExportFormat.PNG])
def test_an_export_whose_manifest_cannot_be_written_leaves_nothing(
    task, tmp_path, monkeypatch, fmt
):
    # Prepare: the manifest's write fails (a full disk after a large data set, say).
    names = [str(i) for i in range(CLASSES)]
    real_write = image_dataset._write_atomically

    def full_disk(path: Path, data: bytes) -> None:
        if path.name.endswith(".json"):
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(image_dataset, "_write_atomically", full_disk)
    # Execute
    with pytest.raises(OSError, match="No space"):
        export_image_dataset(
            task, tmp_path / "s", PER_CLASS, fmt, torch_generator(0, "t"), names, {}
        )
    # Assert: no data set without its manifest (a retry would be refused by it).
    assert list(tmp_path.iterdir()) == []
