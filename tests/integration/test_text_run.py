"""A federation of a from-scratch byte-level transformer on Debian's fortunes, end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from cli_runner import fedgen_here

from fedgen.config import load_config
from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint
from fedgen.errors import ConfigError
from fedgen.eval.perplexity import PerplexityEvaluator
from fedgen.experiment import build_experiment, run_experiment

TINY = [
    "data.sources=[fortunes]",
    "data.num_clients=4",
    "data.partition={kind: themes, params: {themes_per_client: 1, max_bytes_per_client: 20000}}",
    "task.name=byte_gpt",
    "task.params={block_size: 32, layers: 1, heads: 2, width: 32, batch_size: 8, "
    "max_new_tokens: 20}",
    "strategy.params={fraction: 1.0, min_clients: 1}",
    "backend.name=inprocess",
    "federation.rounds=2",
    "federation.local_steps=10",
    "eval.every=1",
    "eval.grid_per_class=1",
    "eval.personalize_steps=10",
    "threads=1",
]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "run"
    summary = run_experiment(load_config(None, TINY), out, progress=False)
    return out, summary


def test_a_text_federation_trains_evaluates_samples_and_reports(text_run):
    out, summary = text_run
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # Bytes drawn uniformly would score 256; two short rounds already do far better.
    assert [m["round"] for m in lines] == [0, 1]
    assert lines[1]["perplexity"] < lines[0]["perplexity"] < 256
    assert lines[1]["perplexity_worst_decile"] >= lines[1]["perplexity"] * 0.99
    assert summary["perplexity"] == lines[1]["perplexity"] and summary["status"] == "completed"
    # Fine-tuning on its own theme helps every client, the worst-served too.
    assert "perplexity_personalized" not in lines[0]  # final evaluation only
    assert summary["perplexity_personalized"] < summary["perplexity"]
    assert summary["perplexity_personalized_worst_decile"] < summary["perplexity_worst_decile"]
    samples = sorted((out / "samples").glob("*.txt"))
    assert len(samples) == 2 and "--- prompt 'The '" in samples[-1].read_text()
    report = (out / "report.html").read_text()
    assert "Generated text" in report and "perplexity" in report
    # A perplexity is per token of its tokenizer: said beside the figure.
    assert "per byte (not comparable" in summary["descriptions"]["perplexity"]
    partition = json.loads((out / "partition.json").read_text())
    assert partition  # themes and token counts per client
    assert "ledger verified" in fedgen_here("ledger", "verify", str(out)).stdout


def test_fedgen_sample_prints_continuations_of_a_prompt(text_run):
    out, _ = text_run
    result = fedgen_here("sample", str(out), "--prompt", "A fool", "--n", "2")
    blocks = [b for b in result.stdout.split("--- ") if b.strip()]
    assert len(blocks) == 2 and all(b.startswith("A fool") for b in blocks)


def test_fedgen_sample_refuses_a_client_model_the_run_does_not_keep(text_run):
    # Every tensor is federated here: a client's model is the global one, so --client
    # would silently sample that; it is refused with what to give instead.
    out, _ = text_run
    result = fedgen_here("sample", str(out), "--prompt", "A", "--n", "1", "--model", "global")
    assert result.stdout.startswith("--- A")
    bad = fedgen_here("sample", str(out), "--prompt", "A", "--n", "1", "--client", "2", check=False)
    said = " ".join(bad.stderr.split())
    assert bad.returncode == 2 and "client 2 has no model of its own" in said
    assert "drop --client, or give --model global" in said and "Traceback" not in said
    bad = fedgen_here("sample", str(out), "--prompt", "A", "--client", "9", check=False)
    assert bad.returncode == 2 and "no client 9" in bad.stderr and "Traceback" not in bad.stderr


def test_perplexity_equals_the_exponent_of_the_models_own_mean_loss(text_run):
    # Prepare: the trained model, and each client's held-out windows.
    out, _ = text_run
    exp = build_experiment(load_config(None, TINY))
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])["federation"]
    exp.task.load_state(state["global_state"])
    evaluator = PerplexityEvaluator(list(exp.data.clients))
    # Execute
    got = evaluator.evaluate_task(exp.task, torch.Generator(), final=True)
    # Assert: against the mean cross-entropy of the task's own training loss.
    per_client = []
    for client in exp.data.clients:
        x, y = client.heldout_windows(32)
        with torch.no_grad():
            logits = exp.task.modules["model"](x[:64])
            loss = F.cross_entropy(logits.reshape(-1, 256), y[:64].reshape(-1))
        per_client.append(math.exp(float(loss)))
    assert got["perplexity"] == pytest.approx(sum(per_client) / len(per_client), rel=1e-5)


def test_text_and_image_settings_do_not_mix():
    with pytest.raises(ConfigError, match="themes"):
        build_experiment(load_config(None, [*TINY, "data.partition={kind: iid, params: {}}"]))
    with pytest.raises(ConfigError, match="generates images"):
        build_experiment(load_config(None, [*TINY, "task.name=cgan", "task.params={}"]))


def test_a_federation_whose_clients_hold_no_heldout_text_is_refused_before_round_one(tmp_path):
    # Prepare: nothing held out, so no client's perplexity can be measured at evaluation.
    items = [
        *TINY,
        "data.partition={kind: themes, params: {themes_per_client: 1, "
        "max_bytes_per_client: 20000, heldout_fraction: 0}}",
    ]
    # Execute / Assert: refused at build, naming what to change, and nothing written.
    with pytest.raises(ConfigError, match=r"held-out tokens.*heldout_fraction"):
        run_experiment(load_config(None, items), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    # A run that never evaluates needs no held-out text.
    build_experiment(load_config(None, [*items, "eval.every=0", "eval.final=false"]))


def test_clients_with_personal_layers_are_scored_with_their_own_model_too(tmp_path):
    # Prepare: each client keeps its own output head (FedPer's personal layer).
    items = [
        *TINY,
        "task.params={block_size: 32, layers: 1, heads: 2, width: 32, batch_size: 8, "
        "max_new_tokens: 20, personal: [model.head]}",
        "eval.personalize_steps=0",
    ]
    # Execute
    summary = run_experiment(load_config(None, items), tmp_path / "run", progress=False)
    # Assert: the own-model figure is there, and it is not the global model's (whose head
    # is the initial one no client trained), but each client's trained head: far better.
    assert summary["status"] == "completed"
    assert summary["perplexity_personal"] < summary["perplexity"]
    assert "own model" in summary["descriptions"]["perplexity_personal"]
