"""Whole-network state dicts <-> the pieces of a split GAN (each client's view).

Federated code sees a split GAN as two whole networks, with tensors keyed
``<network>.<block>.<tensor>`` (``generator.0.fc.weight``), the keys of a task
whose modules ``generator`` and ``discriminator`` are lists of blocks. A
client's *view* is the whole network as that client runs it: its own head and
tail blocks plus the server's blocks in between (HuSCF-GAN, Tawfilis et al.
2025, arXiv 2507.12979, aggregates these views).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from fedgen.errors import ConfigError
from fedgen.split.trainer import UShapedGanTrainer
from fedgen.types import StateDict

NETWORKS = ("generator", "discriminator")


def block_state(state: StateDict, network: str, index: int) -> StateDict:
    """The tensors of block ``index`` of ``network`` in a whole-network ``state``, keys stripped."""
    prefix = f"{network}.{index}."
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise ConfigError(
            f"the state holds no tensors of {network} block {index} (keys {prefix}*); "
            "give a state of the same architecture"
        )
    return out


def _client_blocks(trainer: UShapedGanTrainer, cid: int) -> Iterator[tuple[str, int, nn.Module]]:
    for network, segs in (
        ("generator", trainer.gen_clients),
        ("discriminator", trainer.disc_clients),
    ):
        for index, block in segs[cid].indexed_blocks().items():
            yield network, index, block


def _server_blocks(trainer: UShapedGanTrainer) -> Iterator[tuple[str, int, nn.Module]]:
    for network, server in (
        ("generator", trainer.gen_server),
        ("discriminator", trainer.disc_server),
    ):
        for index, block in server.blocks.items():
            yield network, int(index), block


def trained_parameters(trainer: UShapedGanTrainer, ids: Iterable[int]) -> Iterator[nn.Parameter]:
    """Every trainable parameter of a round: the server's blocks', then clients ``ids``'
    own head and tail blocks' (FedProx anchors each at its value at round start)."""
    blocks = [b for _, _, b in _server_blocks(trainer)]
    for cid in ids:
        blocks.extend(b for _, _, b in _client_blocks(trainer, cid))
    for block in blocks:
        yield from (p for p in block.parameters() if p.requires_grad)


def load_server(trainer: UShapedGanTrainer, state: StateDict) -> None:
    """Load the server's blocks of both networks from a whole-network ``state``."""
    for network, index, block in _server_blocks(trainer):
        block.load_state_dict(block_state(state, network, index), strict=True)


def load_client(trainer: UShapedGanTrainer, cid: int, state: StateDict) -> None:
    """Load client ``cid``'s head and tail blocks from a whole-network ``state``."""
    for network, index, block in _client_blocks(trainer, cid):
        block.load_state_dict(block_state(state, network, index), strict=True)


def _prefixed(network: str, index: int, block: nn.Module) -> StateDict:
    return {f"{network}.{index}.{k}": v.detach().clone() for k, v in block.state_dict().items()}


def client_view(trainer: UShapedGanTrainer, cid: int) -> StateDict:
    """Client ``cid``'s whole networks: the server's blocks, then its own head and tail."""
    view: StateDict = {}
    for network, index, block in _server_blocks(trainer):
        view.update(_prefixed(network, index, block))
    own = {}
    for network, index, block in _client_blocks(trainer, cid):
        own.update(_prefixed(network, index, block))
    view.update(own)
    return view


def client_keys(trainer: UShapedGanTrainer, cid: int) -> frozenset[str]:
    """Keys of the tensors client ``cid`` holds itself (its head and tail blocks)."""
    return frozenset(
        f"{network}.{index}.{k}"
        for network, index, block in _client_blocks(trainer, cid)
        for k in block.state_dict()
    )


def capture_means(features: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``{client: (B, C, H, W)}`` -> ``{client: (1, C, H, W)}`` batch means.

    HuSCF-GAN's clustering reads only the batch mean of the captured activations
    (k-means input and spatial softmax), so the mean is all that needs keeping.
    """
    # float32 whatever the compute dtype: the clustering reads them as numbers, not a
    # training tensor (a bfloat16 mean of 64 rows would round off their differences).
    return {c: f.detach().float().mean(dim=0, keepdim=True) for c, f in features.items()}
