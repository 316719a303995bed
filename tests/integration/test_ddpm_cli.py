"""A tiny federated DDPM end to end through the `fedgen` command (real processes, real MNIST)."""

from __future__ import annotations

import json
import re

from cli_runner import fedgen, fedgen_here
from PIL import Image

TINY = [
    *("--set", "data.num_clients=3"),
    *("--set", "federation.rounds=2"),
    *("--set", "federation.local_steps=2"),
    *("--set", "backend.name=inprocess"),
    *("--set", "eval.every=1"),
    *("--set", "eval.num_quality_samples=100"),
    *("--set", "eval.tstr_samples=100"),
    *("--set", "eval.tstr_epochs=1"),
    *("--set", "eval.grid_per_class=2"),
    *(
        "--set",
        "task.params={width: 8, timesteps: 40, sampling_steps: 3, batch_size: 16, federate: udec}",
    ),
]


def test_a_tiny_partial_ddpm_federation_runs_samples_and_reports(tmp_path, mnist_dir):
    # Execute: the MNIST recipe, shrunk, with the UDec scheme (encoder and latent private).
    out = tmp_path / "ddpm"
    fedgen("run", "configs/mnist_ddpm.yaml", "--no-progress", "--out", str(out), *TINY)

    # Assert: every round trained, was evaluated with its sampling cost, and sent bytes.
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [0, 1]
    for m in lines:
        assert m["loss/denoising"] > 0 and m["bytes_up"] > 0
        assert m["ddim_steps"] == 3 and m["ddpm_timesteps"] == 40
        assert m["sample_seconds_per_1000"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["task"] == "ddpm"
    assert 0 <= summary["tstr_accuracy"] <= 1 and summary["frechet_distance"] > 0
    assert summary["ddim_steps"] == 3 and summary["sample_seconds_per_1000"] > 0
    # The figures and grids are of a model a client holds (its private encoder and
    # latent blocks), not of the shared decoder over the initial blocks.
    assert re.match(r"client \d+'s own model", summary["evaluated_model"])
    # A grid per evaluation and a denoising strip beside it (10 classes x (3 steps + 1)).
    names = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert names == [
        "round_0000.png",
        "round_0000_denoising.png",
        "round_0001.png",
        "round_0001_denoising.png",
    ]
    strip = Image.open(out / "samples" / "round_0001_denoising.png")
    assert strip.size == ((4 * 30 + 2) * 2, (10 * 30 + 2) * 2)
    assert "round_0001_denoising.png" in (out / "report.html").read_text()
    # `fedgen sample` draws from that client's model too (shared decoder + its private
    # encoder), and --client from any client's that trained (here the same one).
    client = re.match(r"client (\d+)", summary["evaluated_model"]).group(1)
    grid = tmp_path / "default.png"
    result = fedgen_here("sample", str(out), "--n", "2", "--out", str(grid))
    assert f"sampling client {client}'s own model" in result.stderr
    own = tmp_path / "client.png"
    fedgen_here("sample", str(out), "--n", "2", "--client", client, "--out", str(own))
    assert Image.open(own).tobytes() == Image.open(grid).tobytes()
