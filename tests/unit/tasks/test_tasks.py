"""Contract tests run on every registered task (PEFT-style test matrix)."""

import pytest
import torch
from torch import nn

from fedgen.data.client_data import ClientData
from fedgen.data.sources import get_source
from fedgen.modality import Modality
from fedgen.params import ParamsError, validate_params
from fedgen.registry import TASKS
from fedgen.seeding import torch_generator

# The image tasks; the text task runs end to end in tests/integration/test_text_run.py.
TASK_NAMES = [n for n in TASKS.names() if TASKS.get(n).modality == Modality.IMAGES]


@pytest.fixture(scope="module")
def client(mnist_dir):
    data = get_source("mnist").load("train", mnist_dir)
    return ClientData(0, data.subset(torch.arange(0, 10000, 20)))  # 500 digits, all classes


def make(name: str, **params):
    cls = TASKS.get(name)
    return cls(cls.Params(batch_size=32, **params), 10, (1, 28, 28), seed=0)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_sample_shape_range_and_determinism(name):
    # DDPM with 3 of its 20 default DDIM steps: the same code path, a seventh of the time.
    task = make(name, **({"sampling_steps": 3} if name == "ddpm" else {}))
    labels = torch.arange(10).repeat(3)
    a = task.sample(labels, torch_generator(0, "s"))
    b = task.sample(labels, torch_generator(0, "s"))
    assert a.shape == (30, 1, 28, 28)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_no_batchnorm_anywhere(name):
    task = make(name)
    for module in task.modules.values():
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("name", TASK_NAMES)
def test_local_training_changes_federated_state_and_reports_finite_losses(name, client):
    task = make(name)
    before = task.federated_state()
    metrics = task.train_local(client, 3, torch_generator(0, "t"), {})
    after = task.federated_state()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert metrics and all(k.startswith("loss/") for k in metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


@pytest.mark.parametrize("name", TASK_NAMES)
def test_load_state_round_trip(name):
    a, b = make(name), make(name, lr=1e-3)
    torch.manual_seed(123)
    for module in b.modules.values():
        for p in module.parameters():
            p.data.normal_()
    a.load_state(b.federated_state())
    assert all(torch.equal(v, b.federated_state()[k]) for k, v in a.federated_state().items())


def test_gan_can_keep_its_discriminator_private():
    task = make("cgan", federate=["generator"])
    assert all(k.startswith("generator.") for k in task.federated_state())
    assert all(k.startswith("discriminator.") for k in task.private_state())


def test_unknown_federated_module_is_an_error():
    with pytest.raises(ValueError, match="choose from"):
        make("cgan", federate=["critic"])


def test_vae_learns_on_real_digits(client):
    """Twenty steps of the cVAE lower its reconstruction loss on real digits."""
    task = make("cvae")
    first = task.train_local(client, 2, torch_generator(0, "a"), {})["loss/reconstruction"]
    task.train_local(client, 40, torch_generator(0, "b"), {})
    last = task.train_local(client, 2, torch_generator(0, "c"), {})["loss/reconstruction"]
    assert last < 0.8 * first


def test_mlp_vae_is_a_few_thousand_parameters_and_learns(client):
    # The simulation benchmarks' tiny network: one hidden layer of 4 units each way.
    task = make("cvae", architecture="mlp", hidden=4, latent_dim=4, lr=1e-2)
    assert sum(t.numel() for t in task.federated_state().values()) == 7_200
    labels = torch.arange(10)
    assert task.sample(labels, torch_generator(0, "s")).shape == (10, 1, 28, 28)
    first = task.train_local(client, 2, torch_generator(0, "a"), {})["loss/reconstruction"]
    task.train_local(client, 60, torch_generator(0, "b"), {})
    last = task.train_local(client, 2, torch_generator(0, "c"), {})["loss/reconstruction"]
    assert last < 0.8 * first


def test_vae_networks_take_labels_as_indices_or_one_hot():
    # The vectorized step passes one-hot rows (F.one_hot is not vmap-safe).
    for architecture in ("conv", "mlp"):
        task = make("cvae", architecture=architecture, hidden=8)
        enc, dec = task.modules["encoder"], task.modules["decoder"]
        x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 3, 9, 3, 1])
        hot = torch.nn.functional.one_hot(y, 10).float()
        assert all(torch.equal(a, b) for a, b in zip(enc(x, y), enc(x, hot), strict=True))
        z = torch.randn(5, task.params.latent_dim)
        assert torch.equal(dec(z, y), dec(z, hot))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"beta": -1.0}, "task.params.beta"),
        ({"lr": 0.0}, "task.params.lr"),
        ({"latent_dim": 0}, "task.params.latent_dim"),
        ({"width": 12}, "task.params.width must be a positive multiple of 8"),
        ({"width": 0}, "task.params.width"),
    ],
    ids=["beta", "lr", "latent_dim", "width-groups", "width-zero"],
)
def test_cvae_params_it_cannot_train_with_are_refused_naming_the_key(params, message):
    with pytest.raises(ParamsError) as info:
        validate_params(TASKS.get("cvae"), params, "task.params")
    assert message in str(info.value)


def test_the_mlp_cvae_has_no_group_norm_to_fill():
    params = validate_params(TASKS.get("cvae"), {"architecture": "mlp", "width": 12}, "p")
    assert params.width == 12  # type: ignore[attr-defined]
