"""HuSCF-GAN end to end through the `fedgen` command on real MNIST (tiny federations)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import fedgen, fedgen_here

from fedgen.config import load_config
from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint
from fedgen.engine.client_models import load_client_model, task_private
from fedgen.experiment import load_run
from fedgen.split.devices import PUBLISHED_DEVICES, load_profiles

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs" / "huscf").glob("s*.yaml"))

# 4 clients x 64 digits, the light network, 2 iterations a round; clustering (k = 2)
# from round 1 on, so a 2-round run holds a clustered round. fedgen's variant's parts
# are on (AC-GAN head, moving average), so resuming covers their state too.
TINY = [
    "--set",
    "data.num_clients=4",
    "--set",
    "data.partition.params.samples_per_client=64",
    "--set",
    "task.params.architecture=light",
    "--set",
    "task.params.batch_size=16",
    "--set",
    "federation.local_steps=2",
    "--set",
    "federation.local_epochs=null",
    "--set",
    "strategy.params.num_clusters=2",
    "--set",
    "strategy.params.plain_rounds=1",
    "--set",
    "task.params.aux_weight=1.0",
    "--set",
    "strategy.params.ema_decay=0.5",
    "--set",
    "strategy.params.ema_warmup=true",
    "--set",
    "threads=1",
]
EVAL = [
    "--set",
    "eval.every=1",
    "--set",
    "eval.num_quality_samples=200",
    "--set",
    "eval.tstr_samples=500",
    "--set",
    "eval.tstr_epochs=1",
    "--set",
    "eval.classifier_epochs=1",
    "--set",
    "eval.grid_per_class=4",
]
NO_EVAL = ["--set", "eval.every=0", "--set", "eval.final=false"]


def final_federation(run_dir: Path) -> dict:
    _, path = list_checkpoints(run_dir / "checkpoints")[-1]
    return load_checkpoint(path)["federation"]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("huscf") / "s1"
    s1 = str(ROOT / "configs/huscf/s1.yaml")
    fedgen(
        "run", s1, "--no-progress", "--out", str(out), "--set", "federation.rounds=2", *TINY, *EVAL
    )
    return out


def test_two_round_huscf_run_writes_a_complete_run_folder(two_rounds):
    out = two_rounds
    assert (out / "config.yaml").is_file() and (out / "partition.json").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [0, 1]
    for m in lines:
        assert m["clients"] == 4 and m["failures"] == 0 and m["bytes_up"] > 0
        assert m["split/latency_analytic"] > 0 and m["split/bytes_per_iteration"] > 0
        assert m["split/seconds_per_iteration"] > 0 and "frechet_distance" in m
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["task"] == "huscf_cgan"
    assert 0.0 <= summary["tstr_accuracy"] <= 1.0
    assert len(list((out / "samples").glob("*.png"))) == 2
    assert "tstr_accuracy" in (out / "report.html").read_text()


def test_a_clients_own_model_is_the_strategys_average_of_it(two_rounds):
    # Prepare: the 2-round run, moving average on (TINY), rebuilt from its folder.
    fed = load_run(two_rounds).federation
    clients = sorted(fed.private_states)
    assert clients and fed.strategy.averaging
    for cid in clients:
        own = task_private(fed.private_states[cid])
        expected = fed.strategy.client_evaluation_state(cid, fed.global_state, own)
        # Execute
        load_client_model(fed, cid)
        # Assert: the whole model (averaged body, averaged head and tail) is what the
        # strategy evaluates this client with, not the raw head on an averaged body.
        loaded = {**fed.task.federated_state(), **fed.task.private_state()}
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), cid
        # and it differs from the weights as trained (the average is not a no-op here).
        assert any(not torch.equal(loaded[k], fed.private_states[cid][k]) for k in own), cid


def test_clients_of_one_cluster_hold_identical_heads(two_rounds):
    fed = final_federation(two_rounds)
    private = {int(k): v for k, v in fed["private_states"].items()}
    cluster_of = fed["strategy"]["cluster_of"]
    assert sorted(private) == [0, 1, 2, 3] and len(set(cluster_of.values())) == 2
    pairs = 0
    for a in cluster_of:
        for b in cluster_of:
            if a < b:
                shared = private[a].keys() & private[b].keys()
                assert any(k.startswith("generator.0.") for k in shared)
                same = all(torch.equal(private[a][k], private[b][k]) for k in shared)
                assert same == (cluster_of[a] == cluster_of[b]), (a, b)
                pairs += cluster_of[a] == cluster_of[b]
    assert pairs >= 1  # 4 clients in 2 clusters: some cluster holds two


def test_resumed_split_run_ends_bit_identical(two_rounds, tmp_path):
    # Prepare: an uninterrupted 3-round run (without evaluation).
    s1 = str(ROOT / "configs/huscf/s1.yaml")
    ref = tmp_path / "ref"
    fedgen(
        "run",
        s1,
        "--no-progress",
        "--out",
        str(ref),
        "--set",
        "federation.rounds=3",
        *TINY,
        *NO_EVAL,
    )
    # Execute: continue the evaluated 2-round run to 3 rounds.
    resumed = fedgen(
        "run",
        "--resume",
        str(two_rounds),
        "--no-progress",
        "--set",
        "federation.rounds=3",
        *NO_EVAL,
    )
    # Assert
    assert resumed.returncode == 0
    a, b = final_federation(ref), final_federation(two_rounds)
    assert a["next_round"] == b["next_round"] == 3
    assert a["global_state"].keys() == b["global_state"].keys()
    assert all(torch.equal(a["global_state"][k], b["global_state"][k]) for k in a["global_state"])
    assert a["private_states"].keys() == b["private_states"].keys()
    for cid, state in a["private_states"].items():
        assert all(torch.equal(v, b["private_states"][cid][k]) for k, v in state.items())
    ema_a, ema_b = a["strategy"]["ema_global"], b["strategy"]["ema_global"]
    assert ema_a.keys() == ema_b.keys() == a["global_state"].keys()
    assert all(torch.equal(v, ema_b[k]) for k, v in ema_a.items())
    assert a["strategy"]["ema_updates"] == b["strategy"]["ema_updates"] == 3
    assert a["strategy"]["ema_private"].keys() == b["strategy"]["ema_private"].keys() != set()
    for cid, state in a["strategy"]["ema_private"].items():
        assert all(torch.equal(v, b["strategy"]["ema_private"][cid][k]) for k, v in state.items())
    # The split run's ledger holds both runs' rounds, signed, and the resume.
    verified = fedgen_here("ledger", "verify", str(two_rounds))
    assert "3 rounds" in verified.stdout and "1 resumes" in verified.stdout


def test_more_clusters_than_clients_is_a_clear_error(tmp_path, mnist_dir):
    s1 = str(ROOT / "configs/huscf/s1.yaml")
    proc = fedgen_here(
        "run", s1, "--no-progress", "--out", str(tmp_path / "bad"), *TINY,
        "--set", "strategy.params.num_clusters=5", check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "num_clusters=5 but only 4 clients" in proc.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.task.name == "huscf_cgan" and cfg.task.params["architecture"] == "faithful"
    assert cfg.backend.name == "split" and cfg.strategy.name == "kld_clustered"
    assert cfg.data.partition.kind == "class_drop"
    # The oracle k is the number of domains.
    assert cfg.strategy.params["num_clusters"] == len(cfg.data.sources)
    assert cfg.data.num_clients % len(cfg.data.sources) == 0


def test_device_profiles_file_is_the_published_one():
    server, devices = load_profiles(ROOT / "configs/huscf/devices.yaml")
    assert tuple(devices) == PUBLISHED_DEVICES
    assert server.flops_per_second == 42e9 * 16
