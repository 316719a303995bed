"""The HuSCF-GAN task: the published blocks as one whole model, trained unsplit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedgen.config import load_config
from fedgen.data.client_data import ClientData
from fedgen.data.sources import get_source
from fedgen.errors import ConfigError
from fedgen.seeding import torch_generator
from fedgen.split.gan_loss import gan_loss
from fedgen.split.huscf_gan import FAITHFUL, discriminator_blocks, generator_blocks
from fedgen.tasks.split_gan import HuscfGan, HuscfGanParams


def make(**params) -> HuscfGan:
    return HuscfGan(HuscfGanParams(batch_size=16, **params), 10, (1, 28, 28), seed=0)


@pytest.fixture(scope="module")
def client(mnist_dir):
    torch.set_num_threads(1)
    data = get_source("mnist").load("train", mnist_dir)
    return ClientData(0, data.subset(torch.arange(0, 10000, 50)))  # 200 digits


def _has_batchnorm(task: HuscfGan) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        for module in task.modules.values()
        for m in module.modules()
    )


def test_presets_and_block_keys() -> None:
    # Prepare
    faithful, light = make(architecture="faithful"), make(architecture="light")
    # Execute
    state = faithful.federated_state()
    reference = {
        f"generator.{i}.{k}": v
        for i, b in enumerate(generator_blocks(FAITHFUL))
        for k, v in b.state_dict().items()
    }
    reference.update(
        {
            f"discriminator.{i}.{k}": v
            for i, b in enumerate(discriminator_blocks(FAITHFUL))
            for k, v in b.state_dict().items()
        }
    )
    # Assert: the published blocks, keyed <network>.<block>.<tensor>, shapes equal.
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    assert _has_batchnorm(faithful) and not _has_batchnorm(make())  # default: groupnorm
    assert not _has_batchnorm(light)
    assert sum(light.num_parameters().values()) < sum(faithful.num_parameters().values()) / 6
    assert len(light.generator_blocks()) == len(light.discriminator_blocks()) == 5
    assert make(architecture="light", width=0.5).spec.width == 0.5


def test_whole_model_is_the_blocks_in_order() -> None:
    # Prepare
    task = make(architecture="light")
    z, y = torch.randn(4, 100), torch.tensor([0, 3, 5, 9])
    # Execute
    h = task.generator_blocks()[0](z, y)
    for block in task.generator_blocks()[1:]:
        h = block(h)
    # Assert
    assert torch.equal(task.modules["generator"](z, y), h)
    assert task.modules["discriminator"](h, y).shape == (4, 1)


def test_channels_last_computes_the_same_networks_in_nhwc() -> None:
    # Prepare: the published network twice, the second (another seed's draw) in
    # channels-last layout with the first's weights loaded.
    plain = make(architecture="faithful")
    params = HuscfGanParams(batch_size=16, architecture="faithful", channels_last=True)
    nhwc = HuscfGan(params, 10, (1, 28, 28), seed=1)
    assert not torch.equal(
        nhwc.federated_state()["generator.1.0.weight"],
        plain.federated_state()["generator.1.0.weight"],
    )
    state = plain.federated_state()
    nhwc.load_state(state)
    loaded = nhwc.federated_state()
    for key, value in loaded.items():
        if value.dim() == 4 and value.shape[1] > 1:
            assert value.is_contiguous(memory_format=torch.channels_last), key
            assert not state[key].is_contiguous(memory_format=torch.channels_last), key
    z, y = torch.randn(8, 100, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    # Execute: G1..G5, then D1..D5 on the result, block by block.
    outputs = {}
    for name, task in (("plain", plain), ("nhwc", nhwc)):
        h, maps = task.generator_blocks()[0](z, y), []
        for block in [*task.generator_blocks()[1:], *task.discriminator_blocks()]:
            maps.append(h)
            h = block(h) if block is not task.discriminator_blocks()[0] else block(h, y)
        outputs[name] = (maps, h)
    # Assert: the same values; in NHWC every feature map of more than one channel.
    for a, b in zip(*(outputs[n][0] for n in ("plain", "nhwc")), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        assert b.shape[1] == 1 or b.is_contiguous(memory_format=torch.channels_last)
        assert a.shape[1] == 1 or not a.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outputs["nhwc"][1], outputs["plain"][1], rtol=1e-4, atol=1e-5)
    # The state keeps its keys and values (checkpoints and digests see no layout).
    assert loaded.keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())


def test_unsplit_training_learns_and_sampling_is_deterministic(client) -> None:
    # Prepare
    task = make(architecture="light")
    before = task.federated_state()
    # Execute
    metrics = task.train_local(client, 3, torch_generator(0, "t"), {})
    a = task.sample(torch.arange(10), torch_generator(0, "s"))
    b = task.sample(torch.arange(10), torch_generator(0, "s"))
    # Assert
    after = task.federated_state()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert set(metrics) == {"loss/discriminator", "loss/generator"}
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert a.shape == (10, 1, 28, 28) and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="1x28x28"):
        HuscfGan(HuscfGanParams(), 10, (3, 32, 32), seed=0)
    with pytest.raises(ConfigError, match="architecture"):
        load_config(overrides=["task.name=huscf_cgan", "task.params.architecture=huge"])
    assert any("BatchNorm" in p for p in make(architecture="faithful").privacy_problems())


def test_gan_loss_adds_the_class_term_only_where_asked() -> None:
    # Prepare: P(real) = 0.8 and logits favouring class 1 for one example.
    out = torch.tensor([[0.8, 0.0, 2.0, 0.0]])
    y = torch.tensor([1])
    bce = -math.log(0.8)
    ce = -math.log(math.exp(2.0) / (2 + math.exp(2.0)))
    # Execute / Assert
    assert float(gan_loss(out, y, 1.0)) == pytest.approx(bce)
    assert float(gan_loss(out, y, 1.0, classify=True, aux_weight=0.5)) == pytest.approx(
        bce + 0.5 * ce
    )
    assert float(gan_loss(out[:, :1], y, 1.0, classify=True, aux_weight=0.5)) == pytest.approx(bce)


def test_aux_classifier_head_learns_the_real_labels(client) -> None:
    # Prepare: the light network with the AC-GAN head, and without.
    task = make(architecture="light", aux_weight=1.0)
    plain = make(architecture="light")
    D = task.modules["discriminator"]
    images, labels = next(client.batches(128, torch_generator(1, "held")))
    # Execute
    task.train_local(client, 60, torch_generator(0, "t"), {})
    with torch.no_grad():
        out = D(images * 2 - 1, labels)
    # Assert: D5 returns P(real) then 10 logits, which now classify the client's real
    # digits (training data: this checks the head is trained, not that it generalises)
    # far above chance; without aux_weight D5 is the published single output.
    assert out.shape == (128, 11) and bool(((out[:, 0] >= 0) & (out[:, 0] <= 1)).all())
    accuracy = float((out[:, 1:].argmax(dim=1) == labels).float().mean())
    assert accuracy > 0.5
    assert plain.modules["discriminator"][4].classes is None
    assert "4.classes.weight" in D.state_dict() and "4.1.weight" in D.state_dict()
