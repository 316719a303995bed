"""Device profiles, FLOP counting, the analytic latency model and the cut searches."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedgen.errors import ConfigError
from fedgen.split.cut_search import exact_search, expand, genetic_search
from fedgen.split.devices import DeviceProfile, ServerProfile, assign_profiles, load_profiles
from fedgen.split.flops import BlockCosts, measure_block_costs
from fedgen.split.huscf_gan import LIGHT, discriminator_blocks, generator_blocks
from fedgen.split.latency import LatencyModel

DEVICES_YAML = Path(__file__).resolve().parents[3] / "configs" / "huscf" / "devices.yaml"
UNIT = ServerProfile(ghz=1e-9, flops_per_cycle=1, downlink_bytes_per_second=1)


def _unit_device(name: str = "d") -> DeviceProfile:
    return DeviceProfile(name, mhz=1e-6, flops_per_cycle=1, bytes_per_second=1)


def test_published_profiles_load() -> None:
    server, devices = load_profiles(DEVICES_YAML)
    assert len(devices) == 7 and server.flops_per_second == 42e9 * 16
    assert devices[0].flops_per_second == 480e6 and devices[2].bytes_per_second == 1e9


@pytest.mark.parametrize("field", ["mhz", "flops_per_cycle", "bytes_per_second"])
@pytest.mark.parametrize("value", [0, -5.0, float("nan")])
def test_zero_or_negative_speed_or_rate_is_config_error(field: str, value: float) -> None:
    kwargs = {"mhz": 100.0, "flops_per_cycle": 1.0, "bytes_per_second": 1e6, field: value}
    with pytest.raises(ConfigError, match=field):
        DeviceProfile("phone", **kwargs)


def test_bad_yaml_profile_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("devices:\n  - {name: x, mhz: 0, flops_per_cycle: 1, bytes_per_second: 1}\n")
    with pytest.raises(ConfigError, match=r"'x'.*mhz"):
        load_profiles(path)
    path.write_text("devices:\n  - {name: x, mhz: 1}\n")
    with pytest.raises(ConfigError, match="lacks"):
        load_profiles(path)


def test_assign_profiles_as_published() -> None:
    prof = assign_profiles(80, 7, np.random.default_rng(0))
    counts = np.bincount(prof, minlength=7)
    assert len(prof) == 80 and sorted(counts.tolist()) == [11] * 4 + [12] * 3


def test_flop_counts_hand_computed() -> None:
    # Prepare: Linear(3 -> 4) then Linear(4 -> 2), batch 2.
    blocks = [nn.Linear(3, 4), nn.Linear(4, 2)]
    x = (torch.randn(2, 3),)
    # Execute
    torch_costs = measure_block_costs(blocks, x, "torch")
    paper_costs = measure_block_costs(blocks, x, "paper")
    # Assert: forward 2*B*in*out; backward adds the input gradient after block 0.
    assert torch_costs.forward_flops == (48.0, 32.0)
    assert torch_costs.backward_flops == (48.0, 64.0)
    assert torch_costs.output_bytes == (2 * 4 * 4, 2 * 2 * 4)
    # The public code's formulas add the bias: (2*in*out + out) * B.
    assert paper_costs.forward_flops == (2 * (24 + 4), 2 * (16 + 2))
    assert paper_costs.backward_flops == (2 * (24 + 4), 2 * (32 + 2))


def _hand_model(devices: int = 1, slip: bool = False) -> LatencyModel:
    gen = BlockCosts((1, 1, 1, 1, 1), (2, 2, 2, 4, 2), (1, 1, 1, 1, 1))
    disc = BlockCosts((0,) * 5, (0,) * 5, (0,) * 5)
    return LatencyModel(gen, disc, [_unit_device()] * devices, UNIT, reproduce_slip=slip)


@pytest.mark.parametrize(
    ("bits", "slip", "expected"),
    [((0, 0, 0, 0), False, 21.0), ((0, 0, 0, 0), True, 23.0), ((1, 1, 0, 0), False, 21.0)],
)
def test_latency_hand_computed(bits: tuple[int, ...], slip: bool, expected: float) -> None:
    # 1 FLOP/s and 1 B/s everywhere. Bits 0000: fwd head F0+O0 then server F1 = 3;
    # bwd head server B1 (slip: B3=4) + O0 + B0 = 5 (7); fwd tail server F3 + O3 + F4 = 3;
    # bwd tail B4 + O3 then server B3 = 7; middle F2 + B2 = 3.
    model = _hand_model(slip=slip)
    assert model.total(np.array([bits])) == pytest.approx(expected)


def _loop_reference(model: LatencyModel, cuts: np.ndarray) -> float:
    """The public code's fitness, client by client (slow and obvious)."""
    total = 0.0
    s_srv, r_down = model.server.flops_per_second, model.server.downlink_bytes_per_second
    for costs, times, hcol, tcol in ((model.generator, 1, 0, 1), (model.discriminator, 3, 2, 3)):
        f, b, o = costs.forward_flops, costs.backward_flops, costs.output_bytes
        n = len(f)
        heads, tails = cuts[:, hcol], cuts[:, tcol]
        n_h0, n_t0 = int((heads == 0).sum()), int((tails == 0).sum())
        head_max = [0.0, 0.0]
        tail_f_max = 0.0
        tail_b_max = [0.0, 0.0]
        head_b_max = 0.0
        for i in range(len(cuts)):
            s, r, h, t = model.speed[i], model.rate[i], int(heads[i]), int(tails[i])
            head_max[h] = max(head_max[h], times * sum(f[: h + 1]) / s + times * o[h] / r)
            srv4 = f[n - 2] * n_t0 / s_srv if t == 0 else 0.0
            down = times * o[n - 2 - t]
            tail_f_max = max(tail_f_max, srv4 + down / r_down + times * sum(f[n - 1 - t :]) / s)
            tail_b_max[t] = max(tail_b_max[t], times * sum(b[n - 1 - t :]) / s + down / r)
            b2 = (b[n - 2] if model.reproduce_slip else b[1]) * n_h0 / s_srv if h == 0 else 0.0
            head_b_max = max(head_b_max, b2 + times * o[h] / r_down + times * sum(b[: h + 1]) / s)
        total += max(f[1] * n_h0 / s_srv + head_max[0], head_max[1]) + tail_f_max
        total += max(b[n - 2] * n_t0 / s_srv + tail_b_max[0], tail_b_max[1]) + head_b_max
        total += (sum(f[2 : n - 2]) + sum(b[2 : n - 2])) * len(cuts) / s_srv
    return total


@pytest.fixture(scope="module")
def light_costs() -> tuple[BlockCosts, BlockCosts]:
    torch.manual_seed(0)
    y = torch.randint(0, 10, (64,))
    g = measure_block_costs(generator_blocks(LIGHT), (torch.randn(64, 100), y))
    d = measure_block_costs(discriminator_blocks(LIGHT), (torch.rand(64, 1, 28, 28), y))
    return g, d


@pytest.mark.parametrize("slip", [False, True])
def test_vectorised_latency_equals_client_loop(
    light_costs: tuple[BlockCosts, BlockCosts], slip: bool
) -> None:
    server, devices = load_profiles(DEVICES_YAML)
    rng = np.random.default_rng(3)
    prof = assign_profiles(12, 7, rng)
    model = LatencyModel(*light_costs, [devices[p] for p in prof], server, slip)
    cuts = rng.integers(0, 2, size=(20, 12, 4))
    fast = model.total(cuts)
    for k in range(20):
        assert fast[k] == pytest.approx(_loop_reference(model, cuts[k]), rel=1e-12)


def test_exact_search_equals_brute_force_over_per_client_cuts(
    light_costs: tuple[BlockCosts, BlockCosts],
) -> None:
    # Prepare: 3 clients, clients 0 and 2 share a profile; slow devices so cuts matter.
    devices = [
        DeviceProfile("slow", 50, 1, 5e6),
        DeviceProfile("fast", 4000, 8, 4e8),
    ]
    prof = np.array([0, 1, 0])
    server = ServerProfile(ghz=0.5, flops_per_cycle=4)
    model = LatencyModel(*light_costs, [devices[p] for p in prof], server)
    # Execute: every per-client combination (16^3) vs. the decomposed per-profile search.
    every = np.array(list(itertools.product([0, 1], repeat=12))).reshape(-1, 3, 4)
    brute = float(model.total(every).min())
    exact = exact_search(model, prof)
    # Assert
    assert exact.latency == pytest.approx(brute, rel=1e-12)
    assert np.array_equal(exact.client_cuts, expand(exact.profile_cuts, prof))


def test_genetic_search_is_seeded_and_finds_the_small_optimum(
    light_costs: tuple[BlockCosts, BlockCosts],
) -> None:
    server, devices = load_profiles(DEVICES_YAML)
    prof = assign_profiles(20, 7, np.random.default_rng(0))
    model = LatencyModel(*light_costs, [devices[p] for p in prof], server)
    a = genetic_search(model, prof, np.random.default_rng(7), population=60, generations=40)
    b = genetic_search(model, prof, np.random.default_rng(7), population=60, generations=40)
    assert a.latency == b.latency and np.array_equal(a.profile_cuts, b.profile_cuts)
    assert len(a.history) == 40
    assert a.latency == pytest.approx(exact_search(model, prof).latency, rel=1e-9)
    with pytest.raises(ConfigError, match="population"):
        genetic_search(model, prof, np.random.default_rng(0), population=3)
