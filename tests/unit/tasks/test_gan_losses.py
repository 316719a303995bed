"""The cGAN's hinge loss, spectral normalization, discriminator steps and mode seeking."""

import pytest
import torch

from fedgen.data.client_data import ClientData
from fedgen.data.sources import get_source
from fedgen.registry import TASKS
from fedgen.seeding import torch_generator
from fedgen.tasks.gan import mode_seeking_term


@pytest.fixture(scope="module")
def client(mnist_dir):
    data = get_source("mnist").load("train", mnist_dir)
    return ClientData(0, data.subset(torch.arange(0, 10000, 20)))  # 500 digits, all classes


def make(**params):
    cls = TASKS.get("cgan")
    return cls(cls.Params(batch_size=32, **params), 10, (1, 28, 28), seed=0)


def test_hinge_losses_match_a_hand_computation():
    task = make(loss="hinge")
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-3.0, 0.0, 0.25])
    # relu(1 - real) = [0, 0.5, 2]; relu(1 + fake) = [0, 1, 1.25]
    assert task._discriminator_loss(real, fake).item() == pytest.approx(2.5 / 3 + 2.25 / 3)
    assert task._generator_loss(fake).item() == pytest.approx(2.75 / 3)


def test_bce_losses_match_a_hand_computation():
    task = make()
    real, fake = torch.tensor([0.0]), torch.tensor([0.0])
    log2 = torch.log(torch.tensor(2.0)).item()
    assert task._discriminator_loss(real, fake).item() == pytest.approx(2 * log2)
    assert task._generator_loss(fake).item() == pytest.approx(log2)


def test_spectral_norm_bounds_every_discriminator_layer(client):
    task = make(loss="hinge", spectral_norm=True)
    task.train_local(client, 3, torch_generator(0, "t"), {})
    D = task.modules["discriminator"]
    D.eval()  # no further power iteration: the weight as the last forward used it
    for layer in (D.features[0], D.features[2], D.head):
        w = layer.weight.flatten(1)
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, rel=0.1)


def test_spectral_norm_state_round_trips_and_is_federated():
    a, b = make(spectral_norm=True), make(spectral_norm=True, lr=1e-3)
    torch.manual_seed(1)
    for p in b.modules["discriminator"].parameters():
        p.data.normal_()
    a.load_state(b.federated_state())
    assert any("parametrizations" in k for k in a.federated_state())
    assert all(torch.equal(v, b.federated_state()[k]) for k, v in a.federated_state().items())


def test_more_discriminator_steps_draw_more_batches(client, monkeypatch):
    drawn = 0
    original = ClientData.batches

    def counting(self, *args, **kwargs):
        nonlocal drawn
        for batch in original(self, *args, **kwargs):
            drawn += 1
            yield batch

    monkeypatch.setattr(ClientData, "batches", counting)
    counts = []
    for d_steps in (1, 3):
        drawn = 0
        make(d_steps=d_steps).train_local(client, 4, torch_generator(0, "t"), {})
        counts.append(drawn)
    assert counts == [4, 12]


def test_only_the_default_loss_vectorizes_and_spectral_norm_is_refused_under_dp():
    assert make().functional_training() is not None
    for params in ({"loss": "hinge"}, {"spectral_norm": True}, {"d_steps": 2}):
        assert make(**params).functional_training() is None
    problems = make(fake_labels="uniform", spectral_norm=True).privacy_problems()
    assert len(problems) == 1 and "spectral_norm" in problems[0]
    assert make(fake_labels="uniform").privacy_problems() == []


def test_the_ac_gan_head_exists_only_when_weighted_and_learns_real_labels(client):
    assert not any("classify" in k for k in make().federated_state())
    task = make(aux_weight=1.0, lr=1e-3)
    assert "discriminator.classify.weight" in task.federated_state()
    assert task.functional_training() is not None  # the vectorized backend takes it too
    assert any("aux_weight" in p for p in task.privacy_problems())
    D = task.modules["discriminator"]
    images, labels = client.data.images[:200].float() / 255, client.data.labels[:200]

    def head_accuracy() -> float:
        with torch.no_grad():
            _, classes = D.logits_and_classes(images * 2 - 1, labels)
        return float((classes.argmax(1) == labels).float().mean())

    before = head_accuracy()
    task.train_local(client, 30, torch_generator(0, "t"), {})
    assert before < 0.3 < head_accuracy()


def test_the_mode_seeking_term_is_large_when_two_latents_give_one_image():
    z = torch.tensor([[0.0, 0.0], [1.0, 3.0]])  # latent gap: (1 + 3) / 2 = 2
    same = torch.ones(2, 1, 2, 2)
    apart = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.5)])  # gap 0.5
    assert mode_seeking_term(same, z, 1).item() == pytest.approx(1e5)
    assert mode_seeking_term(apart, z, 1).item() == pytest.approx(1 / (0.5 / 2 + 1e-5))


def _spread(task, label: int) -> float:
    """Mean absolute gap between a label's images from 64 pairs of latents."""
    g = torch_generator(1, "spread")
    images = task.sample(torch.full((128,), label), g)
    return float((images[:64] - images[64:]).abs().mean())


def test_mode_seeking_makes_the_generator_spread_one_label_over_more_images(client):
    # Prepare: two generators from one initialization, one with the term.
    plain, seeking = make(fake_labels="uniform"), make(fake_labels="uniform", mode_seeking=1.0)
    seeking.load_state(plain.federated_state())
    # Execute: the same 40 steps on the same digits.
    for task in (plain, seeking):
        task.train_local(client, 40, torch_generator(0, "t"), {})
    # Assert: for every label the images of different latents lie further apart.
    assert all(_spread(seeking, y) > 1.2 * _spread(plain, y) for y in range(10))
    # It reads only the generator: allowed under DP-SGD; and it has a vectorized step
    # (test_vectorized_oracle holds that step to train_local).
    assert seeking.privacy_problems() == [] and seeking.functional_training() is not None
