"""Cuts, server-side concatenation, and the wire: only activations and gradients cross."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fedgen.errors import ConfigError
from fedgen.split.cut import Cut
from fedgen.split.huscf_gan import LIGHT, discriminator_blocks, generator_blocks
from fedgen.split.messages import Channel
from fedgen.split.protocol import SplitPass
from fedgen.split.segments import ClientSegments, ServerSegments
from fedgen.split.trainer import UShapedGanTrainer


@pytest.mark.parametrize("cut", [Cut(0, 1), Cut(1, 0), Cut(3, 2), Cut(2, 3), Cut(True, 1)], ids=str)
def test_cut_without_first_or_last_block_or_server_is_config_error(cut: Cut) -> None:
    with pytest.raises(ConfigError, match=r"head|tail|server"):
        ClientSegments(generator_blocks(LIGHT), cut)


def test_from_bits_is_huscf_encoding() -> None:
    assert Cut.from_bits(0, 0) == Cut(1, 1)
    assert Cut.from_bits(1, 0) == Cut(2, 1)
    assert Cut.from_bits(1, 1).server_range(5) == range(2, 3)


class _Affine(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class _First(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y[:, None].float()


def test_split_pass_equals_unsplit_network_in_outputs_and_gradients() -> None:
    # Prepare: 5 blocks, three clients with different cuts; reference = no split.
    blocks = [_First(), _Affine(2.0), _Affine(3.0), _Affine(5.0), _Affine(7.0)]
    cuts = {0: Cut(1, 1), 1: Cut(2, 1), 2: Cut(2, 2)}
    clients = {c: ClientSegments(blocks, cut) for c, cut in cuts.items()}
    server = ServerSegments(blocks, cuts)
    xs = {c: torch.randn(3, 4) for c in cuts}
    ys = {c: torch.arange(3) for c in cuts}
    # Execute
    p = SplitPass("net", clients, server, Channel())
    outs = p.forward({c: (xs[c], ys[c]) for c in cuts})
    sum(o.sum() for o in outs.values()).backward()  # type: ignore[union-attr]
    p.backward()
    # Assert: outputs are 210 * (x + y); the server's block-2 weight got grads from
    # client 0 only (others keep block 2), block 3 (index 2) from all.
    ref = copy.deepcopy(blocks)
    for c in cuts:
        assert torch.allclose(outs[c], 210 * (xs[c] + ys[c][:, None]))
    s1 = sum(float((xs[c] + ys[c][:, None]).sum()) for c in [0]) * 3 * 5 * 7
    assert server.blocks["1"].w.grad is not None
    assert server.blocks["1"].w.grad.item() == pytest.approx(s1, rel=1e-5)
    s2 = sum(float((xs[c] + ys[c][:, None]).sum()) for c in cuts) * 2 * 5 * 7
    assert server.blocks["2"].w.grad.item() == pytest.approx(s2, rel=1e-5)
    assert "3" in server.blocks and server.blocks["3"].w.grad is not None
    assert clients[2].tail[0].w.grad is not None  # client 2 keeps block 4 (index 3)
    assert ref[0] is not blocks[0]


class _RecordTensors(TorchFunctionMode):
    """Records every tensor that any torch operation touches while active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        for a in list(args) + list((kwargs or {}).values()):
            for t in a if isinstance(a, list | tuple) else [a]:
                if isinstance(t, torch.Tensor):
                    self.seen.append(t)
        return func(*args, **(kwargs or {}))


def test_no_label_real_image_or_fake_image_crosses_and_server_never_sees_labels() -> None:
    # Prepare: a recording channel; the server's forward is watched op by op.
    torch.manual_seed(0)
    cuts = {0: Cut(1, 1), 1: Cut(2, 2), 2: Cut(2, 1)}
    channel = Channel(record=True)
    trainer = UShapedGanTrainer(
        generator_blocks(LIGHT), discriminator_blocks(LIGHT), cuts, cuts, 100, channel=channel
    )
    batches = {c: (torch.rand(8, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (8,))) for c in cuts}
    server_inputs: list[torch.Tensor] = []
    for server in (trainer.gen_server, trainer.disc_server):
        original = server.forward

        def watched(inputs, _orig=original):  # type: ignore[no-untyped-def]
            with _RecordTensors() as rec:
                out = _orig(inputs)
            server_inputs.extend(rec.seen)
            return out

        server.forward = watched  # type: ignore[method-assign]
    fakes: list[torch.Tensor] = []
    for c in cuts:
        tail = trainer.gen_clients[c]
        orig_tail = tail.forward_tail

        def keep(h, _orig=orig_tail):  # type: ignore[no-untyped-def]
            out = _orig(h)
            fakes.append(out.detach().clone())
            return out

        tail.forward_tail = keep  # type: ignore[method-assign]
    # Execute
    result = trainer.step(batches, torch.Generator().manual_seed(1))
    # Assert: every message is a float activation/gradient of an inner block's shape.
    assert not result.failures and channel.log
    private = [b[0] for b in batches.values()] + fakes
    labels = [b[1] for b in batches.values()]
    # G1..G4 outputs (64,7,7) (32,14,14) (32,14,14) (16,28,28); D1..D4 (16,14,14) (32,7,7) (64,3,3).
    allowed = {(64, 7, 7), (32, 14, 14), (16, 28, 28), (16, 14, 14), (32, 7, 7), (64, 3, 3)}
    for msg in channel.log:
        t = msg.tensor
        assert t.is_floating_point()
        assert tuple(t.shape[1:]) in allowed, (msg.kind, msg.network, tuple(t.shape))
        for img in private:
            assert t.shape != img.shape or not torch.allclose(t, img)
    assert channel.bytes_up == result.bytes_up > 0 and channel.bytes_down > 0
    # The server's code path touched no integer tensor (labels) and no image tensor.
    assert server_inputs
    label_ptrs = {lab.data_ptr() for lab in labels}
    image_ptrs = {img.data_ptr() for img in private}
    for t in server_inputs:
        assert t.dtype not in (torch.int64, torch.int32)
        assert t.data_ptr() not in label_ptrs | image_ptrs
        assert tuple(t.shape[1:]) != (1, 28, 28)


def test_server_concatenates_each_block_once_per_pass() -> None:
    # Prepare: count calls of each server block.
    blocks = generator_blocks(LIGHT)
    cuts = {0: Cut(1, 1), 1: Cut(2, 1), 2: Cut(1, 2), 3: Cut(2, 2)}
    server = ServerSegments(blocks, cuts)
    calls: dict[str, list[int]] = {}
    for name, block in server.blocks.items():
        block.register_forward_hook(
            lambda m, i, o, name=name: calls.setdefault(name, []).append(i[0].shape[0])
        )
    inputs = {
        c: torch.randn(4, 64, 7, 7) if cut.head == 1 else torch.randn(4, 32, 14, 14)
        for c, cut in cuts.items()
    }
    # Execute
    out = server(inputs)
    # Assert: block 2 for clients 0 and 2 (8 rows), block 3 for all (16), block 4 for 0 and 1.
    assert calls == {"1": [8], "2": [16], "3": [8]}
    assert out[0].shape == (4, 16, 28, 28) and out[3].shape == (4, 32, 14, 14)
    with pytest.raises(ConfigError, match="no cut"):
        server({9: torch.randn(1, 64, 7, 7)})
