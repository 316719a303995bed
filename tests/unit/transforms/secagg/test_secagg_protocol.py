import math

import pytest
import torch
from secagg_helpers import make_updates, max_abs_diff, plain_weighted_sum

from fedgen.tasks.gan import ConditionalGan, GanParams
from fedgen.transforms.secagg import (
    SecAggConfig,
    SecAggRoundFailedError,
    secure_aggregate,
)
from fedgen.transforms.secagg.errors import SecAggConfigError
from fedgen.transforms.secagg.keys import deterministic_entropy


def test_unmasked_sum_equals_plain_weighted_sum_within_the_fixed_point_bound():
    # Prepare: 8 clients, weights = example counts
    updates = make_updates(8, 500, seed=0)
    weights = {i: float(10 * (i + 1)) for i in updates}
    config = SecAggConfig(clip=1.0, rounding="stochastic")
    # Execute
    out = secure_aggregate(updates, weights, config=config, seed=1, round=0)
    # Assert: bound computed from the definition: levels = floor((2^31 - 1) / 8),
    # each client's error < 1 level of clip * W (W = largest weight = 80)
    levels = (2**31 - 1) // 8
    bound = 8 * (1 / levels) * 1.0 * 80.0
    assert out.max_abs_error == pytest.approx(bound)
    err = max_abs_diff(out.weighted_sum, plain_weighted_sum(updates, weights, range(8)))
    assert 0 < err <= bound
    assert abs(out.weight_sum - sum(weights.values())) <= bound
    assert out.survivors == tuple(range(8)) and out.clipped == 0
    mean = out.mean()
    assert torch.allclose(mean["w"], plain_weighted_sum(updates, weights, range(8))["w"] / 360)


def test_a_third_of_clients_drop_after_sharing_and_the_rest_is_recovered_exactly():
    # Prepare: nearest rounding, so the exact integer sum of the survivors is known
    n, dropped = 12, [1, 4, 7, 10]
    updates = make_updates(n, 300, seed=2)
    weights = dict.fromkeys(updates, 1.0)
    config = SecAggConfig(clip=1.0, rounding="nearest")
    levels = (2**31 - 1) // n
    # Execute
    out = secure_aggregate(
        updates, weights, config=config, seed=3, round=5, drop_after_sharing=dropped
    )
    # Assert: the decoded integers equal the sum of each survivor's rounded integers
    survivors = [i for i in range(n) if i not in dropped]
    assert out.survivors == tuple(survivors) and out.dropped == tuple(dropped)
    expected = sum(torch.round(updates[i]["w"].double() * levels) for i in survivors)
    got = torch.round(out.weighted_sum["w"] * levels)
    assert torch.equal(got, expected)
    assert out.weight_sum == pytest.approx(len(survivors), abs=n / levels)


def test_below_threshold_the_round_fails_clearly():
    updates = make_updates(10, 50, seed=4)
    with pytest.raises(
        SecAggRoundFailedError,
        match=r"only 6 of 10 clients survived masked-input collection, threshold 7; lower",
    ):
        secure_aggregate(
            updates,
            dict.fromkeys(updates, 1.0),
            config=SecAggConfig(),
            seed=0,
            round=0,
            drop_after_sharing=[0, 1, 2, 3],
        )


def test_secagg_plus_gives_the_same_sum_as_full_secagg():
    # Prepare: 16 clients on a 4-regular Harary graph, 2 dropouts; nearest rounding
    # makes both sums deterministic, so they must agree bit for bit.
    updates = make_updates(16, 400, seed=5)
    weights = {i: 1.0 + i % 3 for i in updates}
    kwargs = dict(seed=9, round=2, drop_after_sharing=[3, 12], entropy=deterministic_entropy(1))
    # Execute
    full = secure_aggregate(updates, weights, config=SecAggConfig(rounding="nearest"), **kwargs)
    plus = secure_aggregate(
        updates, weights, config=SecAggConfig(rounding="nearest", neighbours=4), **kwargs
    )
    # Assert
    assert plus.plan.neighbours == 4 and plus.plan.threshold == 4
    assert max_abs_diff(plus.weighted_sum, full.weighted_sum) == 0.0
    ref = plain_weighted_sum(updates, weights, plus.survivors)
    assert max_abs_diff(plus.weighted_sum, ref) <= plus.max_abs_error
    # SecAgg+ sends fewer bytes: 4 neighbours instead of 15
    assert plus.bytes_up["share_keys"] < full.bytes_up["share_keys"] / 3


def test_real_model_state_dict_of_about_100k_floats():
    # Prepare: the cGAN's federated state (~92k floats) and 4 perturbed copies
    torch.manual_seed(0)
    task = ConditionalGan(
        GanParams(generator_width=8, discriminator_width=16), 10, (1, 28, 28), seed=0
    )
    state = task.federated_state()
    numel = sum(t.numel() for t in state.values())
    gen = torch.Generator().manual_seed(1)
    updates = {
        c: {k: 0.01 * torch.randn(v.shape, generator=gen) + 0.001 * v for k, v in state.items()}
        for c in range(4)
    }
    weights = {0: 600.0, 1: 100.0, 2: 350.0, 3: 50.0}
    # Execute
    out = secure_aggregate(
        updates, weights, config=SecAggConfig(clip=0.5), seed=0, round=1, drop_after_sharing=[1]
    )
    # Assert
    assert 80_000 < numel < 120_000
    assert list(out.weighted_sum) == list(state)
    ref = plain_weighted_sum(updates, weights, (0, 2, 3))
    assert max_abs_diff(out.weighted_sum, ref) <= out.max_abs_error
    assert out.clipped == 0
    # Masked inputs: 3 survivors x (numel + 1 weight) x 4 bytes + 8 header bytes
    assert out.bytes_up["masked_input"] == 3 * ((numel + 1) * 4 + 8)


def test_clipping_is_counted_and_bounds_the_contribution():
    updates = {0: {"w": torch.tensor([5.0, 0.1])}, 1: {"w": torch.tensor([-5.0, 0.2])}}
    out = secure_aggregate(
        updates, {0: 1.0, 1: 1.0}, config=SecAggConfig(clip=1.0), seed=0, round=0
    )
    assert out.clipped == 2
    assert out.weighted_sum["w"][0].item() == pytest.approx(0.0, abs=out.max_abs_error)
    exact = updates[0]["w"][1].double() + updates[1]["w"][1].double()  # float32 inputs
    assert out.weighted_sum["w"][1].item() == pytest.approx(exact.item(), abs=out.max_abs_error)


def test_bad_inputs_are_rejected():
    updates = make_updates(3, 5, seed=0)
    with pytest.raises(SecAggConfigError, match="same, non-empty set"):
        secure_aggregate(updates, {0: 1.0}, config=SecAggConfig(), seed=0, round=0)
    with pytest.raises(SecAggConfigError, match="finite and > 0"):
        secure_aggregate(updates, {0: 1.0, 1: -1.0, 2: 1.0}, config=SecAggConfig(), seed=0, round=0)
    with pytest.raises(SecAggConfigError, match="not in round"):
        secure_aggregate(
            updates,
            dict.fromkeys(updates, 1.0),
            config=SecAggConfig(),
            seed=0,
            round=0,
            drop_after_sharing=[7],
        )
    updates[2]["w"][0] = math.nan
    with pytest.raises(Exception, match="NaN or Inf"):
        secure_aggregate(
            updates, dict.fromkeys(updates, 1.0), config=SecAggConfig(), seed=0, round=0
        )


def test_result_depends_on_the_seed_only_not_on_the_fresh_keys():
    # Prepare: two runs with fresh os.urandom keys, same seed (what a resumed run needs)
    updates = make_updates(5, 200, seed=6)
    weights = dict.fromkeys(updates, 1.0)
    run = dict(config=SecAggConfig(), seed=11, round=3, drop_after_sharing=[4])
    # Execute
    a = secure_aggregate(updates, weights, **run)
    b = secure_aggregate(updates, weights, **run)
    c = secure_aggregate(updates, weights, **{**run, "seed": 12})
    # Assert: bit-identical for one seed; stochastic rounding differs for another
    assert max_abs_diff(a.weighted_sum, b.weighted_sum) == 0.0
    assert max_abs_diff(a.weighted_sum, c.weighted_sum) > 0.0
