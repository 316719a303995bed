"""LoRA fine-tuning of the packaged SmolLM2 over fortunes, end to end: run folder,
perplexity, samples, report, ledger, and checkpoints that hold adapters, not the base."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
import torch
from cli_runner import fedgen_here

from fedgen.config import load_config
from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint
from fedgen.experiment import run_experiment
from fedgen.ledger import state_digest
from fedgen.tasks import lm_base

pytest.importorskip("peft", reason="task lm_lora needs the lm extra: pip install -e '.[lm]'")
if lm_base.importlib.util.find_spec(lm_base.DEFAULT_PACKAGE) is None:
    pytest.skip(f"the default base is missing: {lm_base.INSTALL_DEFAULT}", allow_module_level=True)

TINY = [
    "data.sources=[fortunes]",
    "data.num_clients=2",
    "data.partition={kind: themes, params: {themes_per_client: 1, max_bytes_per_client: 4000}}",
    "task.name=lm_lora",
    "task.params={block_size: 16, batch_size: 2, max_new_tokens: 6}",
    "strategy.params={fraction: 1.0, min_clients: 1}",
    "backend.name=inprocess",
    "federation.rounds=2",
    "federation.local_steps=1",
    "eval.every=1",
    "eval.grid_per_class=1",
    "threads=1",
]


def _tensors(node: Any) -> list[torch.Tensor]:
    if isinstance(node, torch.Tensor):
        return [node]
    if isinstance(node, dict):
        return [t for v in node.values() for t in _tensors(v)]
    if isinstance(node, list | tuple):
        return [t for v in node for t in _tensors(v)]
    return []


def test_a_lora_federation_runs_and_checkpoints_adapters_only(tmp_path):
    # Execute
    out = tmp_path / "run"
    summary = run_experiment(load_config(None, TINY), out, progress=False)
    # Assert: every round evaluated and sampled, the run completed and verifies.
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [0, 1] and summary["status"] == "completed"
    assert all(math.isfinite(m["perplexity"]) and m["perplexity"] < 1000 for m in lines)
    samples = sorted((out / "samples").glob("*.txt"))
    assert len(samples) == 2 and "--- prompt 'The '" in samples[-1].read_text()
    assert json.loads((out / "partition.json").read_text())["tokenizer"] == lm_base.DEFAULT_FILE
    assert "Generated text" in (out / "report.html").read_text()
    assert "ledger verified" in fedgen_here("ledger", "verify", str(out)).stdout
    # The checkpoint holds the 460,800 adapter numbers and the base's digest, not the base.
    path = list_checkpoints(out / "checkpoints")[-1][1]
    state = load_checkpoint(path)["federation"]
    base = lm_base.load_base_model(lm_base.locate_base(None))
    base_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    assert base_bytes > 500e6 and path.stat().st_size < base_bytes / 50
    saved = _tensors(state)
    assert sum(t.numel() for t in _tensors(state["global_state"])) == 460_800
    assert max(t.numel() for t in saved) == 576 * 8  # the largest adapter, no base matrix
    assert state["private_states"] == {}
    # The digest is of the base's own tensors, under the names peft gives them.
    assert state["frozen_digest"] == state_digest(
        {_peft_name(k): v for k, v in base.state_dict().items()}
    )


def _peft_name(key: str) -> str:
    """A base tensor's name inside the task: peft wraps the model and keeps an adapted
    layer's weight as ``<layer>.base_layer.weight``."""
    return re.sub(
        r"\.(q_proj|v_proj)\.weight$", r".\1.base_layer.weight", f"lm.base_model.model.{key}"
    )


def test_client_level_dp_and_secure_aggregation_work_on_the_adapters(tmp_path):
    # Prepare: the recipe's DP-FedAvg settings and secure aggregation, on LoRA adapters.
    sets = [
        *TINY,
        "federation.rounds=1",
        "eval.every=0",
        "eval.final=false",
        "strategy.params={fraction: 1.0, min_clients: 1, weighted: false, "
        "sampling: poisson, fixed_denominator: true}",
        "transforms=[{name: clip, params: {max_norm: 1.0}}, "
        "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-3}}, "
        "{name: secagg, params: {dropout_rate: 0.0}}]",
    ]
    out = tmp_path / "dp-secagg"
    # Execute
    summary = run_experiment(load_config(None, sets), out, progress=False)
    # Assert: accounted, aggregated securely (the ledger holds the unmasked sum's digest,
    # no individual update), and only the adapters moved.
    assert summary["status"] == "completed" and summary["epsilon"] > 0
    verified = fedgen_here("ledger", "verify", str(out)).stdout
    assert "0 updates" in verified
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])["federation"]
    assert state["global_state"] and all("lora_" in k for k in state["global_state"])


def test_clients_with_personal_adapters_get_their_own_samples_in_the_report(tmp_path):
    out = tmp_path / "fedper"
    sets = [*TINY, "federation.rounds=1", "task.params.personal_layers=[0]"]
    run_experiment(load_config(None, sets), out, progress=False)
    names = sorted(p.name for p in (out / "samples").glob("*.txt"))
    assert names == ["round_0000.txt", "round_0000_client_0.txt", "round_0000_client_1.txt"]
    report = (out / "report.html").read_text()
    assert "client 0&#x27;s own model" in report or "client 0's own model" in report
