"""Norm clipping, fixed and adaptive (Andrew et al. 2021)."""

from __future__ import annotations

import math

import pytest
import torch

from fedgen.errors import ClientUpdateError, ConfigError
from fedgen.transforms.base import TransformContext
from fedgen.transforms.clip import UNCLIPPED_KEY, NormClip, global_norm

CTX = TransformContext(round=0, client_id=1, seed=7, num_clients=10)


def test_global_norm_is_the_norm_of_all_tensors_as_one_vector():
    update = {"a": torch.tensor([3.0]), "b": torch.tensor([[4.0, 0.0]])}
    assert global_norm(update) == pytest.approx(5.0)


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0, 100.0])
def test_clipped_norm_never_exceeds_the_bound_and_direction_is_kept(scale):
    # Prepare
    gen = torch.Generator().manual_seed(0)
    update = {
        "w": scale * torch.randn(50, generator=gen),
        "b": scale * torch.randn(3, generator=gen),
    }
    norm = global_norm(update)
    # Execute
    clipped, metrics = NormClip(max_norm=2.0).on_client(update, CTX)
    # Assert
    assert global_norm(clipped) <= 2.0 + 1e-6
    if norm <= 2.0:
        assert all(torch.equal(clipped[k], update[k]) for k in update)
        assert metrics["clipped"] == 0.0
    else:
        assert global_norm(clipped) == pytest.approx(2.0, rel=1e-6)
        assert torch.allclose(clipped["w"] * norm / 2.0, update["w"], rtol=1e-5)
        assert metrics["clipped"] == 1.0
    assert metrics["update_norm"] == pytest.approx(norm)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_update_is_refused_not_passed_unclipped(bad):
    # min(1, C / nan) is 1: without the check a NaN update would leave unscaled.
    update = {"w": torch.tensor([1000.0, bad]), "b": torch.tensor([100.0])}
    with pytest.raises(ClientUpdateError, match="NaN or Inf"):
        NormClip(max_norm=1.0).on_client(update, CTX)


def test_adaptive_clip_sends_the_centred_unclipped_bit_outside_the_norm():
    # The bit is centred (+-1/2) so one client moves the count by at most 1/2: the
    # sensitivity Andrew et al.'s combined noise multiplier assumes.
    clip = NormClip(max_norm=1.0, target_quantile=0.5)
    small, _ = clip.on_client({"w": torch.tensor([0.5])}, CTX)
    large, _ = clip.on_client({"w": torch.tensor([5.0])}, CTX)
    assert small[UNCLIPPED_KEY].tolist() == [0.5] and large[UNCLIPPED_KEY].tolist() == [-0.5]
    assert global_norm(large) == pytest.approx(1.0)


def run_adaptive(norms: torch.Tensor, rounds: int, sigma_b: float) -> list[float]:
    """Adaptive clipping over ``rounds`` rounds, the server summing the bits as FedAvg does."""
    clip = NormClip(max_norm=0.1, target_quantile=0.5, clip_lr=0.2)
    clip.bind(expected_clients=len(norms), count_noise_stddev=sigma_b)
    bounds = []
    for r in range(rounds):
        ctx = TransformContext(round=r, client_id=None, seed=1000 + r, num_clients=len(norms))
        bits = [clip.on_client({"w": n.reshape(1)}, ctx)[0][UNCLIPPED_KEY] for n in norms]
        mean = {UNCLIPPED_KEY: torch.stack(bits).double().sum(0) / len(norms)}
        out, _ = clip.on_server(mean, ctx)
        assert UNCLIPPED_KEY not in out
        bounds.append(clip.max_norm)
    return bounds


def test_adaptive_clip_moves_to_the_target_quantile_of_update_norms():
    # Prepare: 100 clients whose update norms are 1..100; the median is ~50.
    norms = torch.arange(1, 101, dtype=torch.float64)
    # Execute: start far below (0.1), noiseless count.
    bounds = run_adaptive(norms, rounds=150, sigma_b=0.0)
    # Assert: it rises geometrically (each step at most exp(0.2*0.5)) and settles
    # near the median: within the norms 40..60 over the last 50 rounds.
    assert bounds[0] == pytest.approx(0.1 * math.exp(0.2 * 0.5))
    assert all(40 <= c <= 60 for c in bounds[-50:]), bounds[-50:]


def test_adaptive_clip_with_count_noise_still_tracks_the_quantile_and_is_seeded():
    norms = torch.arange(1, 101, dtype=torch.float64)
    a = run_adaptive(norms, rounds=150, sigma_b=5.0)
    b = run_adaptive(norms, rounds=150, sigma_b=5.0)
    assert a == b  # the count noise comes from the round's server seed
    tail = torch.tensor(a[-60:])
    assert 35 <= float(tail.median()) <= 65


def test_adaptive_state_survives_a_checkpoint():
    clip = NormClip(max_norm=1.0, target_quantile=0.5)
    clip.max_norm = 0.37
    other = NormClip(max_norm=1.0, target_quantile=0.5)
    other.load_state_dict(clip.state_dict())
    assert other.max_norm == 0.37
    assert NormClip(max_norm=1.0).state_dict() == {}


def test_adaptive_clip_without_a_known_denominator_says_what_to_set():
    clip = NormClip(max_norm=1.0, target_quantile=0.5)
    with pytest.raises(ConfigError, match="fixed_denominator=true"):
        clip.on_server({UNCLIPPED_KEY: torch.tensor([0.5], dtype=torch.float64)}, CTX)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_norm": 0.0}, "max_norm must be a finite number > 0"),
        ({"max_norm": float("inf")}, "max_norm must be a finite number > 0"),
        ({"max_norm": 1.0, "target_quantile": 1.0}, "target_quantile must be in"),
        ({"max_norm": 1.0, "clip_lr": 0.0}, "clip_lr must be > 0"),
        ({"max_norm": "big"}, "must be a number"),
    ],
)
def test_bad_clip_parameters_say_what_to_change(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        NormClip(**kwargs)


def test_yaml_style_numeric_strings_are_accepted():
    # YAML 1.1 reads 1e-3 (no dot) as a string.
    assert NormClip(max_norm="1e-3").max_norm == pytest.approx(1e-3)


def test_integer_tensors_are_neither_counted_nor_scaled():
    # Prepare: a BatchNorm step counter of 40 beside a weight of norm 2.
    update = {"w": torch.ones(4), "bn.num_batches_tracked": torch.tensor(40)}
    # Execute
    clipped, metrics = NormClip(max_norm=0.5).on_client(update, CTX)
    # Assert: the norm is the weight's; the counter passes unchanged, still an integer.
    assert metrics["update_norm"] == pytest.approx(2.0)
    assert global_norm(clipped) == pytest.approx(0.5, rel=1e-6)
    assert clipped["bn.num_batches_tracked"].dtype == torch.int64
    assert int(clipped["bn.num_batches_tracked"]) == 40
