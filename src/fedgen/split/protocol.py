"""One forward/backward pass of a split network over the wire, for many clients.

The steps of U-shaped split learning (Vepakomma et al. 2018; HuSCF-GAN,
Tawfilis et al. 2025, arXiv 2507.12979): clients run their heads and send
activations up; the server runs its blocks on all of them and sends each
client its output; clients run their tails and compute losses locally;
gradients w.r.t. the tails' inputs go up, the server back-propagates and
returns to each client only the gradient w.r.t. the activation it sent.
A client whose message does not arrive, or whose own computation raises (a head with
BatchNorm given one example), is left out of the rest of the pass; the others go on.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedgen.split.messages import Channel, ClientDroppedError, received
from fedgen.split.segments import ClientSegments, ServerSegments


class SplitPass:
    """Forward then backward of one network for the clients of one pass."""

    def __init__(
        self,
        name: str,
        clients: Mapping[int, ClientSegments],
        server: ServerSegments,
        channel: Channel,
    ) -> None:
        self.name = name
        self.clients = clients
        self.server = server
        self.channel = channel
        self.failures: dict[int, str] = {}
        self._head_out: dict[int, torch.Tensor] = {}
        self._server_in: dict[int, torch.Tensor] = {}
        self._server_out: dict[int, torch.Tensor] = {}
        self._tail_in: dict[int, torch.Tensor] = {}

    def forward(self, inputs: Mapping[int, tuple[torch.Tensor, ...]]) -> dict[int, torch.Tensor]:
        """Client outputs (they never leave the client) for every client still connected."""
        for cid, args in inputs.items():
            try:
                h = self.clients[cid].forward_head(*args)
            except Exception as exc:  # the client's own code: it fails alone
                self.failures[cid] = client_error(exc)
                continue
            try:
                msg = self.channel.send("activation", "up", self.name, cid, h)
            except ClientDroppedError as exc:
                self.failures[cid] = str(exc)
                continue
            self._head_out[cid] = h
            self._server_in[cid] = received(msg, needs_grad=True)
        server_out = self.server(self._server_in) if self._server_in else {}
        outputs: dict[int, torch.Tensor] = {}
        for cid, h in server_out.items():
            try:
                msg = self.channel.send("activation", "down", self.name, cid, h)
            except ClientDroppedError as exc:
                self.failures[cid] = str(exc)
                continue
            self._server_out[cid] = h
            self._tail_in[cid] = received(msg, needs_grad=True)
            try:
                outputs[cid] = self.clients[cid].forward_tail(self._tail_in[cid])
            except Exception as exc:
                self.failures[cid] = client_error(exc)
        return outputs

    def backward(self) -> None:
        """After the clients back-propagated their losses to the tails' inputs: finish the pass.

        Clients whose tail input got no gradient (they dropped out later) are skipped.
        """
        grads: dict[int, torch.Tensor] = {}
        for cid, leaf in self._tail_in.items():
            if cid in self.failures or leaf.grad is None:
                continue
            try:
                msg = self.channel.send("gradient", "up", self.name, cid, leaf.grad)
            except ClientDroppedError as exc:
                self.failures[cid] = str(exc)
                continue
            grads[cid] = msg.tensor
        if not grads:
            return
        torch.autograd.backward([self._server_out[c] for c in grads], [grads[c] for c in grads])
        for cid in grads:
            grad_in = self._server_in[cid].grad
            if grad_in is None:
                continue
            try:
                msg = self.channel.send("gradient", "down", self.name, cid, grad_in)
            except ClientDroppedError as exc:
                self.failures[cid] = str(exc)
                continue
            if self._head_out[cid].requires_grad:  # a head without parameters has no graph
                try:
                    self._head_out[cid].backward(msg.tensor)
                except Exception as exc:
                    self.failures[cid] = client_error(exc)


def client_error(exc: BaseException) -> str:
    """Why a client's own computation failed, as its entry in ``failures``."""
    return f"{type(exc).__name__} on the client: {exc}"
