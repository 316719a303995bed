"""A task's local training as a pure function of one client's tensors, for ``vmap``.

``train_local`` trains the task's own modules in place, one client at a time. A task
that can also describe one local step as a pure function (tensors in, tensors out:
``torch.func.functional_call`` on its modules, ``torch.func.grad``, the optimizers of
``fedgen.tasks.functional_optim``) returns a ``FunctionalTraining`` from
``Task.functional_training``; the vectorized backend then maps that step over the
stacked tensors of many clients with ``torch.func.vmap`` (one batched computation
instead of one per client).

The contract that makes the two paths give the same model: ``draw`` takes a client's
random inputs for one step (its batch, its noise) from the client's generator in
exactly the order ``train_local`` draws them, and ``step`` does the arithmetic of one
iteration of ``train_local``'s loop. The oracle test
(``tests/unit/engine/test_vectorized_oracle.py``) holds every such task to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

#: One client's tensors by module, then by state-dict key (``{"generator": {"embed.weight": t}}``).
ModuleTensors = dict[str, dict[str, torch.Tensor]]
#: One client's optimizer state: any nest of dicts of tensors (stacked like the tensors).
OptimizerState = dict[str, Any]
#: What one step's ``draw`` returns: named tensors whose first dimension is a batch.
StepInputs = dict[str, torch.Tensor]
#: A client's training batches ``(images, labels)``, as ``ClientData.batches`` yields them.
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class FunctionalTraining(ABC):
    """One task's local step as pure functions of one client's tensors (see module doc).

    ``step`` runs under ``vmap``: it must not call ``.item()``, branch on tensor values
    or change a tensor in place. Inputs of different clients may differ in batch size
    (a shard smaller than the batch): the backend pads each input to the longest and
    passes a 0/1 ``masks[name]`` per input, so losses must be ``masked_mean``s.
    """

    #: The per-round config keys ``step`` honours (``ClientInstruction.config``); a client
    #: whose config holds another key trains through ``train_local`` instead.
    config_keys: ClassVar[frozenset[str]] = frozenset({"lr"})
    #: A measured slowdown of this step under ``vmap`` against ``train_local`` on a CPU,
    #: with what to use instead; the vectorized backend logs it once ("": none measured).
    slower_on_cpu: ClassVar[str] = ""

    @abstractmethod
    def init_state(self, tensors: ModuleTensors, config: dict[str, Any]) -> OptimizerState:
        """A client's fresh optimizer state (as ``train_local`` builds fresh optimizers)."""

    def kept(self, state: OptimizerState) -> dict[str, torch.Tensor]:
        """The part of an optimizer state the client keeps between rounds, as the private
        tensors ``train_local``'s task returns it under (default: none, every round starts
        fresh). Called on stacked states: each tensor then has a leading client dimension.
        """
        return {}

    def resume(self, state: OptimizerState, kept: dict[str, torch.Tensor]) -> OptimizerState:
        """The stacked fresh ``state`` with ``kept`` loaded (the tensors ``kept`` names,
        stacked; a client that kept none has the fresh state's rows): each client's
        optimizer where it left off."""
        return state

    def source(self, data: Any, batch_size: int, generator: torch.Generator) -> Any:
        """What ``draw`` reads a client's steps from, given its data (a ``ClientData`` or
        the modality's own): by default its shuffled batches. A task whose ``train_local``
        samples its data otherwise returns its own sampler."""
        return data.batches(batch_size, generator)

    @abstractmethod
    def draw(self, batches: Any, generator: torch.Generator) -> StepInputs:
        """One step's inputs for one client, drawn as ``train_local`` draws them from
        ``source``'s result (by default the client's ``Batches``)."""

    @abstractmethod
    def step(
        self,
        tensors: ModuleTensors,
        state: OptimizerState,
        inputs: StepInputs,
        masks: dict[str, torch.Tensor],
        step: int,
        config: dict[str, Any],
    ) -> tuple[ModuleTensors, OptimizerState, dict[str, torch.Tensor]]:
        """One iteration for one client: new tensors, new optimizer state, its losses.

        ``step`` counts from 1 (the optimizers' bias correction); ``config`` is the
        clients' shared round config. Losses are scalars named as ``train_local``'s
        metrics; the backend reports their mean over the client's steps.
        """

    def batched_step(
        self,
        tensors: ModuleTensors,
        state: OptimizerState,
        inputs: StepInputs,
        masks: dict[str, torch.Tensor],
        step: int,
        config: dict[str, Any],
    ) -> tuple[ModuleTensors, OptimizerState, dict[str, torch.Tensor]] | None:
        """``step`` for a whole group at once, or None (the default): the backend then maps
        ``step`` with ``vmap``.

        Every tensor, state and input has a leading client dimension, and each loss is
        ``(clients,)``. A task whose networks allow it (``fedgen.tasks.batched_mlp``)
        writes the group's arithmetic with batched ops directly, which for small networks
        costs less than ``vmap``'s batching rules; the oracle test holds it to
        ``train_local`` as it holds ``step``.
        """
        return None


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values (..., B)`` over the rows where ``mask (..., B)`` is 1 (padding
    excluded): a scalar for one client, ``(C,)`` for a batched group."""
    return (values * mask).sum(-1) / mask.sum(-1)
