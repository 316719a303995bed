"""Compressed federations on real MNIST digits: the bytes recorded are the bytes a wire
carries, worker processes agree with the sequential loop, and a run with error-feedback
residuals resumes bit for bit."""

from __future__ import annotations

import pytest
import torch
from test_federation import interrupt_at
from tiny_federation import tiny_config

from fedgen.engine.backends import local_training
from fedgen.engine.callbacks import CheckpointCallback
from fedgen.experiment import build_experiment, restore_latest
from fedgen.transforms.base import PRIVATE_PREFIX
from fedgen.wire import encode

TOPK = "[{name: topk, params: {fraction: 0.05}}]"
SIGN = "[{name: sign, params: {fraction: 0.5}}]"
LOWRANK = "[{name: lowrank, params: {rank: 1}}]"


@pytest.mark.parametrize(
    "transforms",
    ["[]", TOPK, "[{name: quantize, params: {bits: 2}}]", "[{name: random_mask}]", SIGN, LOWRANK],
    ids=["float32", "topk", "quantize-2", "random_mask", "sign", "lowrank"],
)
def test_recorded_bytes_are_the_lengths_of_the_serialized_messages(
    mnist_dir, monkeypatch, transforms
):
    # Prepare: record the length of every job and reply, serialized for real, by client.
    sent: dict[str, dict[int, int]] = {"up": {}, "down": {}}
    job_message, reply_message = local_training.job_message, local_training.reply_message

    def measured_job(ins, *args):
        message = job_message(ins, *args)
        sent["down"][ins.client_id] = len(encode(message))
        return message

    def measured_reply(result):
        message = reply_message(result)
        sent["up"][result.client_id] = len(encode(message))
        return message

    monkeypatch.setattr(local_training, "job_message", measured_job)
    monkeypatch.setattr(local_training, "reply_message", measured_reply)
    fed = build_experiment(tiny_config(mnist_dir, transforms=transforms)).federation
    # Execute
    record = fed.run_round(0)
    # Assert
    assert record.metrics["failures"] == 0
    assert record.metrics["bytes_up"] == sum(sent["up"].values())
    assert record.metrics["bytes_down"] == sum(sent["down"].values())
    # metrics.jsonl's per-client figures, in the plan's order, are the same lengths.
    by_client = record.metrics["bytes_by_client"]
    assert sorted(by_client["clients"]) == sorted(sent["up"]) == sorted(sent["down"])
    assert by_client["up"] == [sent["up"][c] for c in by_client["clients"]]
    assert by_client["down"] == [sent["down"][c] for c in by_client["clients"]]


def test_a_two_bit_update_is_over_twelve_times_smaller_than_float32(mnist_dir):
    plain = build_experiment(tiny_config(mnist_dir)).federation.run_round(0)
    quantized = build_experiment(
        tiny_config(mnist_dir, transforms="[{name: quantize, params: {bits: 2}}]")
    ).federation.run_round(0)
    ratio = quantized.metrics["bytes_up"] / plain.metrics["bytes_up"]
    # 2/32 of the bits, plus a float32 (min, step) per 512 values, the arrays' names in
    # the header and 8-byte alignment of the small tensors (biases).
    assert 1 / 16 < ratio < 1 / 12


def test_process_pool_matches_in_process_with_a_codec(mnist_dir):
    # Oracle: the workers encode the reply for real; the sequential loop only counts it.
    items = {"transforms": TOPK, "federation.rounds": 2}
    ref = build_experiment(tiny_config(mnist_dir, **items)).federation
    pool = build_experiment(
        tiny_config(mnist_dir, **items, **{"backend.name": "process_pool"})
    ).federation
    assert ref.run() and pool.run()
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], pool.global_state[k]), k
    assert [m["bytes_up"] for m in ref.history] == [m["bytes_up"] for m in pool.history]
    for cid, private in ref.private_states.items():
        assert private.keys() == pool.private_states[cid].keys()
        assert all(torch.equal(v, pool.private_states[cid][k]) for k, v in private.items())


@pytest.mark.parametrize("transforms", [TOPK, SIGN, LOWRANK], ids=["topk", "sign", "lowrank"])
def test_a_run_with_error_feedback_resumes_bit_identically(mnist_dir, tmp_path, transforms):
    # Prepare: 2 of 4 clients a round, so residuals wait across rounds in private state.
    cfg = tiny_config(
        mnist_dir,
        transforms=transforms,
        **{"federation.rounds": 4, "strategy.params": "{min_clients: 2, fraction: 0.5}"},
    )
    ref = build_experiment(cfg).federation
    assert ref.run()
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    interrupt_at(first.task, 2 * 2 + 2)  # round 2, its second client
    # Execute
    assert first.run() is False
    second = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    assert restore_latest(second, tmp_path, cfg) == 1
    assert any(
        k.startswith(PRIVATE_PREFIX) for state in second.private_states.values() for k in state
    )
    assert second.run()
    # Assert: the model, every residual and the byte counts as if never interrupted.
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), k
    assert ref.private_states.keys() == second.private_states.keys()
    for cid, private in ref.private_states.items():
        assert all(torch.equal(v, second.private_states[cid][k]) for k, v in private.items())
    assert [m["bytes_up"] for m in second.history] == [m["bytes_up"] for m in ref.history]


def test_a_random_mask_composes_with_secure_aggregation(mnist_dir):
    # Prepare: the same clipped, masked round, plain and under secure aggregation.
    clip_mask = "{name: clip, params: {max_norm: 2.0}}, {name: random_mask}"
    plain = build_experiment(tiny_config(mnist_dir, transforms=f"[{clip_mask}]")).federation
    secure = build_experiment(
        tiny_config(mnist_dir, transforms=f"[{clip_mask}, {{name: secagg}}]")
    ).federation
    # Execute
    record = secure.run_round(0)
    plain.run_round(0)
    # Assert: every client survives; the unmasked sum is the plain one up to fixed point.
    assert record.metrics["failures"] == 0 and "round_failed" not in record.metrics
    for k, v in plain.global_state.items():
        assert torch.allclose(secure.global_state[k], v, atol=1e-3), k
    # Clients mask the compact encoding (a tenth of the coordinates), not the decoded
    # update: the masked vectors are about as small as the plain round's replies.
    full = build_experiment(
        tiny_config(mnist_dir, transforms="[{name: clip, params: {max_norm: 2.0}}, {name: secagg}]")
    ).federation.run_round(0)
    assert record.metrics["bytes_up"] < full.metrics["bytes_up"] / 4
