"""Secure aggregation inside the one round loop, on real MNIST digits.

Oracle: the same round without secagg (the plain running sum). The two global
states agree within the fixed-point error bound the protocol reports
(``secagg/max_abs_error`` bounds the error of the weighted sum; the mean divides
it by the denominator), plus float32 rounding when the mean is applied.
"""

from __future__ import annotations

import pytest
import torch
from test_federation import interrupt_at, tiny_config
from tiny_federation import TINY_DPSGD

from fedgen.engine.callbacks import CheckpointCallback
from fedgen.engine.federation import WITHHELD_FAILURE
from fedgen.experiment import build_experiment, restore_latest
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.transforms.secagg import SecureAggregation
from fedgen.transforms.secagg.codec import from_message, to_message
from fedgen.transforms.secagg.requests import LoneRelease, LoneRequest
from fedgen.wire import decode, encode

torch.set_num_threads(1)

CLIP = "{name: clip, params: {max_norm: 1.0}}"
UNWEIGHTED = "{min_clients: 2, weighted: false, fixed_denominator: true}"
F32 = 2.0**-23


def secagg(**params: object) -> str:
    inner = ", ".join(f"{k}: {v}" for k, v in params.items())
    return f"{{name: secagg, params: {{{inner}}}}}"


class Crash(UpdateTransform):
    """Chosen clients crash on the client: the plain reference for dropped clients."""

    def __init__(self, ids: set[int]) -> None:
        self.ids = ids

    def on_client(self, update, ctx: TransformContext):
        if ctx.client_id in self.ids:
            raise RuntimeError("client went offline")
        return update, {}


def states_close(a, b, denominator: float, max_abs_error: float) -> None:
    bound = max_abs_error / denominator
    for k in a:
        diff = (a[k].double() - b[k].double()).abs()
        assert (diff <= bound + 2 * F32 * b[k].double().abs() + 1e-12).all(), k


@pytest.mark.parametrize("strategy", ["{min_clients: 2}", UNWEIGHTED])
def test_secure_round_equals_plain_round_within_the_fixed_point_bound(mnist_dir, strategy):
    # Prepare
    plain = build_experiment(
        tiny_config(mnist_dir, **{"strategy.params": strategy, "transforms": f"[{CLIP}]"})
    ).federation
    secure = build_experiment(
        tiny_config(
            mnist_dir, **{"strategy.params": strategy, "transforms": f"[{CLIP}, {secagg()}]"}
        )
    ).federation
    before = {k: v.clone() for k, v in plain.global_state.items()}
    # Execute
    ref = plain.run_round(0).metrics
    got = secure.run_round(0).metrics
    # Assert
    assert got["secagg/survivors"] == 4 and got["secagg/dropped"] == 0
    assert got["examples"] == ref["examples"] == 10_000
    denominator = ref["examples"] if strategy == "{min_clients: 2}" else 4.0
    states_close(secure.global_state, plain.global_state, denominator, got["secagg/max_abs_error"])
    assert any(not torch.equal(before[k], secure.global_state[k]) for k in before)
    # The protocol's messages replace the plain updates on the wire and cost more than
    # their payload; each client's training reply carries no update, only its count
    # and metrics (every message counted as encoded by fedgen.wire).
    payload = sum(v.numel() * v.element_size() for v in plain.global_state.values())
    assert got["bytes_up"] > 4 * payload and got["bytes_down"] > ref["bytes_down"]
    replies = got["bytes_up"] - 4 * got["secagg/bytes_up_per_client"]
    assert 0 < replies < 4 * 2_000


def test_dropouts_aggregate_the_survivors_only(mnist_dir):
    # Prepare: dropout_rate 0.25 of 4 clients drops one after key sharing.
    dropped = set(SecureAggregation(dropout_rate=0.25).dropouts(range(4), seed=0, round=0))
    assert len(dropped) == 1
    secure = build_experiment(
        tiny_config(mnist_dir, transforms=f"[{CLIP}, {secagg(dropout_rate=0.25)}]")
    ).federation
    plain = build_experiment(tiny_config(mnist_dir, transforms=f"[{CLIP}]")).federation
    plain.transforms.append(Crash(dropped))
    # Execute
    got = secure.run_round(0).metrics
    ref = plain.run_round(0).metrics
    # Assert: the same as a plain round in which the dropped client never answered.
    assert got["secagg/survivors"] == 3 and got["secagg/dropped"] == 1
    assert ref["failures"] == 1 and got["examples"] == ref["examples"] < 10_000
    states_close(
        secure.global_state, plain.global_state, ref["examples"], got["secagg/max_abs_error"]
    )


def test_below_threshold_the_round_fails_as_a_value_and_the_run_goes_on(mnist_dir):
    # Prepare: 2 of 4 drop; the default threshold 2/3 needs 3 survivors.
    fed = build_experiment(
        tiny_config(
            mnist_dir,
            **{"federation.rounds": 2, "transforms": f"[{CLIP}, {secagg(dropout_rate=0.5)}]"},
        )
    ).federation
    before = {k: v.clone() for k, v in fed.global_state.items()}
    # Execute
    assert fed.run()
    # Assert
    assert [m["round"] for m in fed.history] == [0, 1]
    for m in fed.history:
        assert "threshold 3" in m["round_failed"] and m["examples"] == 0
        assert m["secagg/dropped"] == 2 and m["bytes_up"] > 0
    assert all(torch.equal(before[k], fed.global_state[k]) for k in before)


def test_one_usable_client_is_not_aggregated_securely(mnist_dir):
    fed = build_experiment(tiny_config(mnist_dir, transforms=f"[{CLIP}, {secagg()}]")).federation
    fed.transforms.insert(0, Crash({0, 1, 2}))
    before = {k: v.clone() for k, v in fed.global_state.items()}
    record = fed.run_round(0)
    assert "would reveal it" in record.metrics["round_failed"]
    assert all(torch.equal(before[k], fed.global_state[k]) for k in before)


def test_the_server_keeps_no_individual_update(mnist_dir):
    # Prepare: record what the backend hands the loop.
    fed = build_experiment(tiny_config(mnist_dir, transforms=f"[{CLIP}, {secagg()}]")).federation
    seen = []
    run = fed.backend.run

    def recording(*args):
        for res in run(*args):
            seen.append(res)
            yield res

    fed.backend.run = recording  # type: ignore[method-assign]
    # Execute
    record = fed.run_round(0)
    # Assert
    assert "round_failed" not in record.metrics and len(seen) == 4
    # The backend never hands the loop an update: each client held its own.
    assert all(res.held and res.update is None for res in seen)


def test_adaptive_clip_bit_travels_through_the_secure_sum(mnist_dir):
    # Prepare: a small bound, so some updates are clipped and the bit sum is informative.
    strategy = {"strategy.params": UNWEIGHTED}
    adaptive = "{name: clip, params: {max_norm: 0.085, target_quantile: 0.5}}"
    plain = build_experiment(tiny_config(mnist_dir, **strategy, transforms=f"[{adaptive}]"))
    secure = build_experiment(
        tiny_config(mnist_dir, **strategy, transforms=f"[{adaptive}, {secagg()}]")
    )
    # Execute
    ref = plain.federation.run_round(0).metrics
    got = secure.federation.run_round(0).metrics
    # Assert: the same count of unclipped clients, hence the same next bound.
    assert got["secagg/clip_range"] == 1.0  # the 0/1 bit needs the range to reach 1
    assert got["normclip/unclipped_fraction"] == pytest.approx(
        ref["normclip/unclipped_fraction"], abs=1e-6
    )
    assert 0 < ref["normclip/unclipped_fraction"] < 1
    assert got["normclip/next_clip_norm"] == pytest.approx(ref["normclip/next_clip_norm"])


def test_resume_after_interrupt_is_bit_identical_with_secagg(mnist_dir, tmp_path):
    cfg = tiny_config(
        mnist_dir,
        **{"federation.rounds": 3, "transforms": f"[{CLIP}, {secagg(dropout_rate=0.25)}]"},
    )
    ref = build_experiment(cfg).federation
    assert ref.run()
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    interrupt_at(first.task, 4 + 2)  # round 1, second of 4 clients
    assert first.run() is False
    second = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    assert restore_latest(second, tmp_path, cfg) == 0
    assert second.run()
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), k
    assert [m["secagg/survivors"] for m in second.history] == [3, 3, 3]


def _client_dp_over_secagg(mnist_dir, **secagg_params: object):
    """Four clients, all sampled, clipped and noised at the client level over a secure sum."""
    dp = "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-5}}"
    return build_experiment(
        tiny_config(
            mnist_dir,
            **{
                "strategy.params": "{min_clients: 1, weighted: false, fixed_denominator: true,"
                " sampling: poisson, fraction: 1.0}",
                "transforms": f"[{CLIP}, {dp}, {secagg(**secagg_params)}]",
            },
        )
    ).federation


DP_POISSON = (
    "{min_clients: 1, weighted: false, fixed_denominator: true, sampling: poisson, fraction: 1.0}"
)
DP = "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-5}}"


def _lone_round(mnist_dir, pipeline: str):
    """Round 0 of four clients, three crashing, ``pipeline`` without and with client
    DP over secagg; returns both federations, the start state and the stage's messages
    (each exchange's decoded requests and replies)."""
    plain = build_experiment(
        tiny_config(mnist_dir, **{"strategy.params": DP_POISSON, "transforms": f"[{pipeline}]"})
    ).federation
    secure = build_experiment(
        tiny_config(
            mnist_dir,
            **{
                "strategy.params": DP_POISSON,
                "transforms": f"[{pipeline}, {DP}, {secagg()}]",
            },
        )
    ).federation
    for fed in (plain, secure):
        fed.transforms.insert(0, Crash({0, 1, 2}))
    seen: list[tuple[dict[int, object], dict[int, object]]] = []
    exchange = secure.backend.exchange

    def spy(round, requests):
        replies = exchange(round, requests)
        seen.append(
            (
                {c: from_message(decode(b)) for c, b in requests.items()},
                {c: from_message(decode(b)) for c, b in replies.items() if b is not None},
            )
        )
        return replies

    secure.backend.exchange = spy  # type: ignore[method-assign]
    before = {k: v.clone() for k, v in secure.global_state.items()}
    return plain, secure, before, seen


def _pieces(values, segments, names):
    return dict(zip(names, torch.split(torch.from_numpy(values), list(segments)), strict=True))


def test_under_client_dp_the_lone_client_adds_the_rounds_noise_and_the_server_none(mnist_dir):
    # Prepare: client-level DP over a secure sum; three of four clients crash, so the
    # round has one client, whose update a secure sum cannot hide.
    plain, secure, before, seen = _lone_round(mnist_dir, CLIP)
    # Execute
    plain.run_round(0)
    metrics = secure.run_round(0).metrics
    # Assert: one request and one release, the release's noise drawn by the client.
    ((requests, replies),) = seen
    request, release = requests[3], replies[3]
    assert isinstance(request, LoneRequest) and isinstance(release, LoneRelease)
    m = 4.0  # the fixed denominator: the expected cohort
    names = list(before)
    floats = [k for k in names if before[k].is_floating_point()]
    stds = dict(zip(names, request.stds, strict=True))
    std = stds[floats[0]]
    assert std == pytest.approx(1.0, rel=1e-3) and std >= 1.0  # z (C + rounding excess)
    assert all(stds[k] == std for k in floats)
    sent = _pieces(release.values, request.segments, names)
    noise = torch.cat(
        [
            (sent[k] - m * (plain.global_state[k].double() - before[k].double()).reshape(-1))
            for k in floats
        ]
    )
    assert noise.numel() > 10_000 and noise.std().item() == pytest.approx(std, rel=0.03)
    assert abs(noise.mean().item()) < 0.05
    # The server added nothing: the model moved by the release over m, to float32.
    for k in floats:
        moved = (secure.global_state[k].double() - before[k].double()).reshape(-1)
        assert torch.allclose(moved, sent[k] / m, atol=1e-5), k
    assert metrics["clientleveldp/noise_std"] == pytest.approx(std / m)
    # And the round counts as any other: charged, no failure, no cohort figures.
    assert "round_failed" not in metrics and metrics["epsilon"] > 0
    assert "examples" not in metrics and "failed_clients" not in metrics


def test_a_lone_round_shows_the_same_figures_as_a_round_of_more_clients(mnist_dir):
    # Under client-level DP the cohort's size stays secret: the figures a round
    # releases must not tell a round of one client from a round of three.
    lone = _client_dp_over_secagg(mnist_dir)
    lone.transforms.insert(0, Crash({0, 1, 2}))
    more = _client_dp_over_secagg(mnist_dir)
    more.transforms.insert(0, Crash({0}))
    a, b = lone.run_round(0).metrics, more.run_round(0).metrics
    assert "secagg/survivors" not in b  # withheld: the figure that would count them
    assert set(a) == set(b)


def test_a_lone_client_that_sends_garbage_counts_as_failed(mnist_dir):
    # Prepare: the lone client's release is replaced by a finite but huge vector.
    _, secure, before, _ = _lone_round(mnist_dir, CLIP)
    exchange = secure.backend.exchange

    def hostile(round, requests):
        replies = exchange(round, requests)
        release = from_message(decode(replies[3]))
        if isinstance(release, LoneRelease):
            forged = LoneRelease(3, release.round, release.values * 0 + 1e30)
            replies[3] = encode(to_message(forged))
        return replies

    secure.backend.exchange = hostile  # type: ignore[method-assign]
    # Execute
    metrics = secure.run_round(0).metrics
    # Assert: no failure shows; the round released the noise of no client's update
    # (the model moved by noise of the round's std, not by 1e30 / m).
    assert "round_failed" not in metrics and metrics["epsilon"] > 0
    moved = torch.cat(
        [
            (secure.global_state[k] - before[k]).reshape(-1)
            for k in before
            if before[k].is_floating_point()
        ]
    )
    assert moved.abs().max() < 10 * metrics["clientleveldp/noise_std"]
    assert moved.std().item() == pytest.approx(metrics["clientleveldp/noise_std"], rel=0.05)


def test_under_sample_level_dp_a_lone_clients_update_is_left_out(mnist_dir):
    # DP-SGD noises on the clients and the server adds none: there is no noise for a
    # lone client to add, and its update alone cannot be hidden, so it is left out.
    fed = build_experiment(
        tiny_config(
            mnist_dir,
            **TINY_DPSGD,
            **{"strategy.params": "{min_clients: 1}", "transforms": f"[{CLIP}, {secagg()}]"},
        )
    ).federation
    fed.transforms.insert(0, Crash({0, 1, 2}))
    asked: list[object] = []
    fed.backend.exchange = lambda round, requests: asked.append(requests) or {}  # type: ignore[method-assign]
    before = {k: v.clone() for k, v in fed.global_state.items()}
    metrics = fed.run_round(0).metrics
    # (The strategy then has no client to average, which min_clients fails; the size of
    # the cohort is not what sample-level DP hides.)
    assert "0 usable client updates" in metrics["round_failed"] and not asked
    assert all(torch.equal(before[k], fed.global_state[k]) for k in before)


def test_a_lone_client_adds_the_adaptive_clips_count_noise_too(mnist_dir):
    adaptive = (
        "{name: clip, params: {max_norm: 0.085, target_quantile: 0.5, count_noise_stddev: 2.0}}"
    )
    _, secure, _, seen = _lone_round(mnist_dir, adaptive)
    metrics = secure.run_round(0).metrics
    ((requests, replies),) = seen
    request, release = requests[3], replies[3]
    # The count's bit is the vector's last tensor, with the clip's own noise (sigma_b).
    assert request.stds[-1] == 2.0 and request.segments[-1] == 1
    bit = float(release.values[-1])
    assert bit not in (-0.5, 0.5)  # noised by the client...
    # ...and not again by the server: the released fraction is the client's figure.
    assert metrics["normclip/unclipped_fraction"] == pytest.approx(bit / 4.0 + 0.5)


def test_a_lone_client_under_a_shared_mask_codec_noises_what_it_sends(mnist_dir):
    # Prepare: the clients send a random quarter of each tensor (the same for all).
    plain, secure, before, seen = _lone_round(
        mnist_dir, f"{CLIP}, {{name: random_mask, params: {{fraction: 0.25}}}}"
    )
    # Execute
    plain.run_round(0)
    metrics = secure.run_round(0).metrics
    # Assert: the client sent (and noised) only its compact encoding...
    ((requests, replies),) = seen
    assert isinstance(requests[3], LoneRequest)
    release = replies[3]
    floats = [k for k in before if before[k].is_floating_point()]
    total = sum(before[k].numel() for k in floats)
    assert 0.2 * total < release.values.size < 0.3 * total
    # ...and every coordinate of the release carries noise of one std: the client's on
    # the coordinates it sent, the server's on the others.
    noise = torch.cat(
        [
            (secure.global_state[k].double() - plain.global_state[k].double()).reshape(-1)
            for k in floats
        ]
    )
    assert int((noise == 0).sum()) == 0
    assert noise.std().item() == pytest.approx(metrics["clientleveldp/noise_std"], rel=0.03)


def test_secure_fedavgm_equals_plain_fedavgm_within_the_fixed_point_bound(mnist_dir):
    # Server momentum needs only the sum (Needs.SUM): under secure aggregation it must take
    # the same step from the unmasked sum as from the plain updates. One round: in a
    # second, the clients would train from models that already differ by the fixed-point
    # error, and local training does not keep that difference small.
    strategy = {
        "strategy.name": "fedavgm",
        "strategy.params": "{min_clients: 2, momentum: 0.5, server_lr: 0.5}",
    }
    plain = build_experiment(
        tiny_config(mnist_dir, **strategy, **{"transforms": f"[{CLIP}]"})
    ).federation
    secure = build_experiment(
        tiny_config(mnist_dir, **strategy, **{"transforms": f"[{CLIP}, {secagg()}]"})
    ).federation
    before = {k: v.clone() for k, v in plain.global_state.items()}
    ref = plain.run_round(0).metrics
    got = secure.run_round(0).metrics
    assert got["secagg/survivors"] == 4 and got["examples"] == ref["examples"]
    states_close(
        secure.global_state, plain.global_state, ref["examples"], got["secagg/max_abs_error"]
    )
    assert any(not torch.equal(before[k], secure.global_state[k]) for k in before)
    # server_lr 0.5 makes the step half of FedAvg's: a secure path that skipped the
    # server optimizer would land twice as far.


def test_a_table_synthesizer_federates_under_secure_aggregation(mnist_dir):
    # TVAE on the affairs survey, occupation silos: the masked sum gives the same model as
    # the plain mean, and each client's kept Adam moments stay in its private state (they
    # are never part of what is masked and summed).
    table = {
        "data.sources": "[fair]",
        "data.num_clients": 4,
        "data.partition": "{kind: table_silos, params: {max_modes: 2}}",
        "task.name": "tvae",
        "task.params": "{batch_size: 100, hidden: 16, latent_dim: 4}",
        "federation.local_steps": 3,
    }
    plain = build_experiment(
        tiny_config(mnist_dir, **table, **{"transforms": f"[{CLIP}]"})
    ).federation
    secure = build_experiment(
        tiny_config(mnist_dir, **table, **{"transforms": f"[{CLIP}, {secagg()}]"})
    ).federation
    before = {k: v.clone() for k, v in plain.global_state.items()}
    ref = plain.run_round(0).metrics
    got = secure.run_round(0).metrics
    assert got["secagg/survivors"] == ref["clients"] >= 2
    states_close(
        secure.global_state, plain.global_state, ref["examples"], got["secagg/max_abs_error"]
    )
    assert any(not torch.equal(before[k], secure.global_state[k]) for k in before)
    assert not any("optimizer" in k for k in secure.global_state)
    assert all(any("optimizer" in k for k in s) for s in secure.private_states.values())


def test_under_client_dp_a_failed_rounds_reason_does_not_count_the_cohort(mnist_dir):
    # Prepare: client-level DP over a secure sum from which 2 of 4 drop (threshold 3).
    fed = _client_dp_over_secagg(mnist_dir, dropout_rate=0.5)
    # Execute
    record = fed.run_round(0)
    # Assert: the round failed, and says so without "threshold 3" or survivor counts.
    assert record.metrics["round_failed"] == WITHHELD_FAILURE
