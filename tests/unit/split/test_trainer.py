"""The U-shaped cGAN iteration: equal to unsplit training, and robust to a client dropping out."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedgen.errors import ConfigError
from fedgen.split.cut import Cut
from fedgen.split.huscf_gan import (
    CLUSTER_BLOCK,
    FAITHFUL,
    LIGHT,
    HuscfGanSpec,
    discriminator_blocks,
    generator_blocks,
)
from fedgen.split.messages import Channel
from fedgen.split.trainer import UShapedGanTrainer


def _chain(blocks: list[nn.Module], *inputs: torch.Tensor) -> torch.Tensor:
    h = blocks[0](*inputs)
    for b in blocks[1:]:
        h = b(h)
    return h


def _batches(clients: list[int], n: int = 8) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    return {
        c: (
            torch.rand(n, 1, 28, 28, generator=gen) * 2 - 1,
            torch.randint(0, 10, (n,), generator=gen),
        )
        for c in clients
    }


def test_faithful_blocks_have_the_published_shapes() -> None:
    # Prepare
    g, d = generator_blocks(FAITHFUL), discriminator_blocks(FAITHFUL)
    z, y, x = torch.randn(2, 100), torch.tensor([3, 7]), torch.rand(2, 1, 28, 28)
    # Execute
    g_shapes, h = [], g[0](z, y)
    g_shapes.append(tuple(h.shape))
    for b in g[1:]:
        h = b(h)
        g_shapes.append(tuple(h.shape))
    d_shapes, h = [], d[0](x, y)
    d_shapes.append(tuple(h.shape))
    for b in d[1:]:
        h = b(h)
        d_shapes.append(tuple(h.shape))
    # Assert
    assert g_shapes == [
        (2, 256, 7, 7),
        (2, 128, 14, 14),
        (2, 128, 14, 14),
        (2, 64, 28, 28),
        (2, 1, 28, 28),
    ]
    assert d_shapes == [(2, 64, 14, 14), (2, 128, 7, 7), (2, 128, 7, 7), (2, 256, 3, 3), (2, 1)]
    assert g[0].fc.in_features == 110 and d[4][1].in_features == 2304
    assert isinstance(g[1][1], nn.BatchNorm2d) and isinstance(
        generator_blocks(LIGHT)[1][1], nn.GroupNorm
    )
    with pytest.raises(ConfigError, match="norm"):
        HuscfGanSpec(norm="layer")  # type: ignore[arg-type]


def test_one_client_split_iteration_equals_unsplit_cgan_step() -> None:
    # Prepare: the same initial blocks, trained split (cut 2/2 and 1/1) and unsplit.
    torch.manual_seed(0)
    g_blocks, d_blocks = generator_blocks(LIGHT), discriminator_blocks(LIGHT)
    ref_g, ref_d = copy.deepcopy(g_blocks), copy.deepcopy(d_blocks)
    trainer = UShapedGanTrainer(g_blocks, d_blocks, {0: Cut(2, 1)}, {0: Cut(1, 2)}, 100)
    images, labels = _batches([0])[0]
    # Execute: split
    trainer.step({0: (images, labels)}, torch.Generator().manual_seed(3))
    # Execute: reference (the public code's train_step for one client, unsplit)
    opt_g = torch.optim.Adam(nn.ModuleList(ref_g).parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(nn.ModuleList(ref_d).parameters(), lr=2e-4, betas=(0.5, 0.999))
    z = torch.randn(8, 100, generator=torch.Generator().manual_seed(3))
    fake = _chain(ref_g, z, labels)
    opt_d.zero_grad()
    p_fake = _chain(ref_d, fake.detach(), labels)
    F.binary_cross_entropy(p_fake, torch.zeros_like(p_fake)).backward()
    p_real = _chain(ref_d, images, labels)
    F.binary_cross_entropy(p_real, torch.ones_like(p_real)).backward()
    opt_d.step()
    opt_g.zero_grad()
    p_gen = _chain(ref_d, fake, labels)
    F.binary_cross_entropy(p_gen, torch.ones_like(p_gen)).backward()
    opt_g.step()
    # Assert: every block's weights match wherever they live (client or server).
    split_g = [
        *trainer.gen_clients[0].head,
        trainer.gen_server.blocks["2"],
        trainer.gen_server.blocks["3"],
        *trainer.gen_clients[0].tail,
    ]
    split_d = [
        *trainer.disc_clients[0].head,
        *[trainer.disc_server.blocks[str(i)] for i in (1, 2)],
        *trainer.disc_clients[0].tail,
    ]
    for split, ref in ((split_g, ref_g), (split_d, ref_d)):
        for a, b in zip(split, ref, strict=True):
            for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
                torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_client_dropping_mid_iteration_is_a_failure_value_and_the_rest_train() -> None:
    # Prepare: client 1 disconnects after its generator activation went up (1 message).
    torch.manual_seed(0)
    cuts = {0: Cut(1, 1), 1: Cut(2, 2), 2: Cut(1, 2)}
    channel = Channel(drop_after={1: 1})
    trainer = UShapedGanTrainer(
        generator_blocks(LIGHT),
        discriminator_blocks(LIGHT),
        cuts,
        cuts,
        100,
        channel=channel,
        capture_block=CLUSTER_BLOCK,
    )
    before = {c: copy.deepcopy(m.state_dict()) for c, m in trainer.gen_clients.items()}
    server_before = copy.deepcopy(trainer.gen_server.state_dict())
    # Execute
    result = trainer.step(_batches(list(cuts)), torch.Generator().manual_seed(1))
    # Assert
    assert set(result.failures) == {1} and "never arrived" in result.failures[1]
    assert result.clients == [0, 2] and set(result.features) == {0, 2}
    assert result.features[0].shape == (8, 32, 7, 7)
    for key, value in before[1].items():
        assert torch.equal(trainer.gen_clients[1].state_dict()[key], value)
    assert not torch.equal(
        trainer.gen_clients[0].state_dict()["head.0.fc.weight"], before[0]["head.0.fc.weight"]
    )
    assert any(
        not torch.equal(v, trainer.gen_server.state_dict()[k]) for k, v in server_before.items()
    )
    assert all(torch.isfinite(torch.tensor(v)) for v in (result.d_loss_real, result.g_loss))


def test_client_whose_own_computation_raises_fails_alone() -> None:
    # Prepare: client 1 holds one example, and its generator head has a BatchNorm that
    # cannot normalise a batch of one in training (torch raises on the client).
    torch.manual_seed(0)
    cuts = {0: Cut(1, 1), 1: Cut(1, 1), 2: Cut(1, 2)}
    spec = HuscfGanSpec(width=0.25, norm="batch")
    trainer = UShapedGanTrainer(generator_blocks(spec), discriminator_blocks(spec), cuts, cuts, 100)
    batches = _batches(list(cuts))
    batches[1] = (batches[1][0][:1], batches[1][1][:1])
    before = {k: v.clone() for k, v in trainer.gen_clients[1].named_parameters()}
    # Execute
    result = trainer.step(batches, torch.Generator().manual_seed(1))
    # Assert: the others trained, the one-example client is a failure with torch's reason
    assert set(result.failures) == {1} and "on the client" in result.failures[1]
    assert "more than 1 value per channel" in result.failures[1]
    assert result.clients == [0, 2]
    for key, value in trainer.gen_clients[1].named_parameters():
        assert torch.equal(value, before[key])
    assert all(torch.isfinite(torch.tensor(v)) for v in (result.d_loss_real, result.g_loss))


def test_mismatched_clients_and_unknown_batches_are_config_errors() -> None:
    g, d = generator_blocks(LIGHT), discriminator_blocks(LIGHT)
    with pytest.raises(ConfigError, match="same clients"):
        UShapedGanTrainer(g, d, {0: Cut()}, {1: Cut()}, 100)
    trainer = UShapedGanTrainer(g, d, {0: Cut()}, {0: Cut()}, 100)
    with pytest.raises(ConfigError, match="unknown clients"):
        trainer.step(_batches([7]), torch.Generator())
