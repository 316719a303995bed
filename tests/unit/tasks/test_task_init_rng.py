"""Building a task draws its initial weights from its own seed, not the global RNG."""

import functools
import hashlib

import pytest
import torch

from fedgen.modality import DataSpec, Modality
from fedgen.registry import TASKS

# sha256 over the sorted ``federated_state()`` of the default cgan (10 classes, 1x28x28,
# seed 0), recorded before Task.__init__ stopped reseeding the global RNG: the initial
# weights must stay bit-identical. Pinned to the CPU RNG of torch's default initializers.
CGAN_SEED0_SHA256 = "51018261a248b5b07c84fd3daea9a72fd9a98b35144214586bd10128fc204509"


@functools.cache
def table_spec(vertical: bool = False) -> DataSpec:
    """A real table's spec (``fair``, 2 silos, or 2 clients holding its columns): the
    encoder a table task is built from."""
    from fedgen.data.table_data import SiloPartition
    from fedgen.data.table_vertical import VerticalPartition

    if vertical:
        columns = [
            ["rate_marriage", "age", "yrs_married", "children"],
            ["religious", "educ", "occupation", "occupation_husb", "had_affair"],
        ]
        return VerticalPartition(columns, max_modes=3).federate("fair", 2, seed=0).spec()
    return SiloPartition(max_modes=3).federate("fair", 2, seed=0).spec()


def make(name: str, seed: int = 0):
    cls = TASKS.get(name)
    params = cls.Params()
    # A pretrained text task's data is tokenized with its own tokenizer; bytes otherwise.
    tokenizer = cls.tokenizer(params)
    if cls.modality == Modality.TEXT:
        spec = DataSpec(Modality.TEXT, vocab_size=tokenizer.vocab_size if tokenizer else 256)
    elif cls.modality == Modality.TABLES:
        # A column-split synthesizer is built from a column split's encoders.
        spec = table_spec(vertical=name.startswith("vertical_"))
    else:
        spec = DataSpec(Modality.IMAGES, num_classes=10, image_shape=(1, 28, 28))
    return cls.from_spec(params, spec, seed)


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", TASKS.names())
def test_constructing_a_task_leaves_the_global_rng_untouched(name):
    # Prepare
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    # Execute
    make(name, seed=0)
    # Assert
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name", TASKS.names())
def test_initial_weights_depend_on_the_seed_only(name):
    torch.manual_seed(1)
    a = make(name, seed=3).federated_state()
    torch.manual_seed(2)
    torch.rand(10)
    b = make(name, seed=3).federated_state()
    c = make(name, seed=4).federated_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_default_cgan_initial_state_is_bit_identical_to_before():
    assert state_sha256(make("cgan", seed=0).federated_state()) == CGAN_SEED0_SHA256
