"""Image tasks' functional steps (the vectorized backend's): padded rows change nothing.

The oracle test (``tests/unit/engine/test_vectorized_oracle.py``) compares whole
federations, where a small client's update is diluted by the example-weighted average
(a 7-row client weighs 1% there, under its tolerance); here one client's step is
compared directly, alone and padded beside a larger client.
"""

import pytest
import torch
from torch.func import vmap

from fedgen.data.client_data import ClientData
from fedgen.data.sources import get_source
from fedgen.engine.backends.stacking import pad_and_stack, stack
from fedgen.registry import TASKS


@pytest.fixture(scope="module")
def digits(mnist_dir):
    data = get_source("mnist").load("train", mnist_dir)
    return ClientData(0, data.subset(torch.arange(0, 10000, 50)))  # 200 digits


GAN = {"batch_size": 16, "generator_width": 16, "discriminator_width": 16}
CASES: dict[str, tuple[str, dict[str, object]]] = {
    "cgan": ("cgan", GAN),
    "cgan-aux": ("cgan", {**GAN, "aux_weight": 1.0}),
    "cgan-mode-seeking": ("cgan", {**GAN, "mode_seeking": 0.5}),
    "cgan-aux-mode-seeking": ("cgan", {**GAN, "aux_weight": 1.0, "mode_seeking": 0.5}),
    "cvae": ("cvae", {"batch_size": 16, "width": 16}),
    "cvae-mlp": ("cvae", {"batch_size": 16, "architecture": "mlp", "hidden": 8, "latent_dim": 4}),
    "ddpm": ("ddpm", {"width": 16, "timesteps": 20, "sampling_steps": 2, "batch_size": 16}),
    "ddpm-min-snr": (
        "ddpm",
        {"width": 16, "timesteps": 20, "sampling_steps": 2, "batch_size": 16, "snr_gamma": 5},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_padded_client_takes_the_step_it_takes_alone(digits, case):
    # Prepare: a client with a batch of 7 (its shard's last batch), and one of 16 that
    # pads it to 16 rows (and a GAN's mode-seeking half from 4 to 8) in a group.
    name, params = CASES[case]
    cls = TASKS.get(name)
    task = cls(cls.Params(**params), 10, (1, 28, 28), seed=0)
    functional = task.functional_training()
    assert functional is not None
    draws = [
        functional.draw(
            functional.source(digits, n, torch.Generator().manual_seed(c)),
            torch.Generator().manual_seed(10 + c),
        )
        for c, n in enumerate((7, 16))
    ]
    start = {
        m: {k: v.clone() for k, v in module.state_dict().items()}
        for m, module in task.modules.items()
    }

    def run(group: list[dict[str, torch.Tensor]]):
        inputs, masks = pad_and_stack(group)
        tensors = stack([start] * len(group))
        state = vmap(lambda t: functional.init_state(t, {}))(tensors)
        return vmap(lambda t, s, i, m: functional.step(t, s, i, m, 1, {}))(
            tensors, state, inputs, masks
        )

    # Execute
    (alone, _, losses_alone), (padded, _, losses_padded) = run(draws[:1]), run(draws)
    first = next(iter(draws[0]))  # the batch (images): 7 rows padded to 16
    assert pad_and_stack(draws)[1][first][0].tolist() == [1.0] * 7 + [0.0] * 9

    # Assert: the losses exactly as the client's own rows give them, and the new weights
    # too but for float rounding that Adam's first step can blow up to about lr on a few
    # coordinates whose gradient is near zero (see the oracle test's tolerance).
    for name, value in losses_alone.items():
        assert losses_padded[name][0] == pytest.approx(float(value[0]), rel=1e-5), name
    for module, tensors in alone.items():
        for key, value in tensors.items():
            diff = (padded[module][key][0] - value[0]).abs()
            assert float((diff > 1e-5).double().mean()) <= 0.02, f"{module}.{key}"
            assert float(diff.max()) <= 1e-3, f"{module}.{key}"
