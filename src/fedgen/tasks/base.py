"""The Task contract: one generative model family, unaware that it is federated.

A task owns its networks, runs local training on one client's data from
whatever state is loaded, samples from its modality (``modality``: images,
text, tables) under its kind of condition (``conditioning``: class, prompt,
column value, none), and says of each tensor whether it is federated, private
to its client, or a frozen pretrained base (``tensor_kind``). Following
pfl-research, one task instance is reused for every client: the backend loads
the global state, trains, takes the difference and moves on, so memory stays
O(model) not O(cohort); a frozen base is loaded once and never copied.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedgen.data.client_data import ClientData
from fedgen.data.text_data import Tokenizer
from fedgen.modality import Conditioning, DataSpec, Modality, TensorKind
from fedgen.tasks.functional import FunctionalTraining
from fedgen.types import StateDict


class TaskParams(BaseModel):
    """Hyper-parameters shared by every task; subclasses add their own fields."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    #: FedPer's personal layers (Arivazhagan et al. 2019): tensors named ``<module>.<key>``
    #: or a prefix of such names (``generator.embed``) that stay private to each client,
    #: whatever the task federates; see ``Task.tensor_kind``.
    personal: list[str] = Field(default_factory=list)
    #: The dtype of local training's matrix products and convolutions (``Task.autocast``,
    #: PyTorch's automatic mixed precision): ``bfloat16`` computes them in bfloat16 while
    #: the weights, their updates and the optimizer stay float32. Sampling and scoring
    #: always run in float32; a client's evaluation-time fine-tune trains as it does.
    compute_dtype: Literal["float32", "bfloat16"] = "float32"


def bfloat16_is_slow() -> str | None:
    """Why ``compute_dtype: bfloat16`` would slow this CPU down, or None where it would not.

    oneDNN runs bfloat16 on AVX-512 (natively with AVX-512 BF16 or AMX); on a CPU with
    AVX2 only, torch emulates it, and a step took 8-10x as long as in float32 on an
    AVX2 AMD EPYC (``benchmarks/compute_dtype.py``, 2026-12-07: the default cGAN 9.5x,
    the MNIST DDPM 8.3x), where AVX-512 BF16 made it 1.1-1.65x faster.
    """
    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None  # this torch cannot say; assume the user knows their machine
    if supported:
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"task.params.compute_dtype=bfloat16 on a CPU without bfloat16 support (torch's CPU "
        f"capability here: {capability}): torch emulates it, and a step takes about 8-10x "
        "as long as in float32 (benchmarks/compute_dtype.py); set "
        "task.params.compute_dtype=float32 on this machine"
    )


class LocalTraining:
    """Where ``train_local`` gets its batches and optimizers: plain, unless a privacy
    engine is attached to the task.

    Tasks open one per call (``with self.local_training(generator) as local:``) and
    draw from it, as Opacus's ``PrivacyEngine.make_private`` hands back a wrapped
    loader and optimizer, so the training code stays the task's own. This plain version
    changes nothing: the batches are ``data.batches`` and optimizers pass through.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def batches(
        self, data: ClientData, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless training batches ``(images, labels)`` of the client's data."""
        return data.batches(batch_size, self.generator)

    def optimizer(
        self, optimizer: torch.optim.Optimizer, modules: Sequence[str]
    ) -> torch.optim.Optimizer:
        """The optimizer to step for the parameters of ``modules`` (here: ``optimizer``)."""
        return optimizer

    def close(self) -> None:
        """Release whatever was attached for this call (nothing here)."""

    def __enter__(self) -> LocalTraining:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PrivacyEngine(Protocol):
    """What a task needs of an attached privacy engine (see ``fedgen.privacy.dpsgd``)."""

    #: The run's secret noise key; the backend sets it before each local training.
    noise_key: bytes | None

    def open(self, task: Task, generator: torch.Generator) -> LocalTraining:
        """A ``LocalTraining`` for one call of ``task.train_local``."""
        ...


class Task(ABC):
    """Base class of every generative task (see module docstring)."""

    #: The pydantic model that validates this task's ``params`` in a recipe.
    Params: ClassVar[type[TaskParams]] = TaskParams
    #: What ``sample`` returns; data, metrics, report and ``fedgen sample`` dispatch on it.
    modality: ClassVar[Modality] = Modality.IMAGES
    #: What ``sample``'s condition is (see ``fedgen.modality.Conditioning``).
    conditioning: ClassVar[Conditioning] = Conditioning.CLASS

    @classmethod
    def from_spec(cls, params: TaskParams, spec: DataSpec, seed: int) -> Task:
        """Build the task for data described by ``spec`` (image tasks: classes and shape).

        Raises ``ValueError`` when the data is of another modality than the task's.
        """
        if spec.modality != cls.modality or spec.image_shape is None:
            raise ValueError(
                f"task {cls.__name__} generates {cls.modality}, but the data is "
                f"{spec.modality}; choose a task for {spec.modality} or other data.sources"
            )
        return cls(params, spec.num_classes, spec.image_shape, seed)

    @classmethod
    def tokenizer(cls, params: TaskParams) -> Tokenizer | None:
        """The tokenizer the data must be tokenized with for this task, or None for the
        default (text: ``ByteTokenizer``). A pretrained language model returns its own,
        so that the experiment tokenizes each client's text with it before building the task.
        """
        return None

    def __init__(
        self, params: TaskParams, num_classes: int, image_shape: tuple[int, int, int], seed: int
    ) -> None:
        self.params = params
        self._personal = tuple(params.personal)
        self.num_classes = num_classes
        self.image_shape = image_shape
        #: Set by ``fedgen.privacy.dpsgd.attach_dpsgd``; None trains without DP.
        self.privacy_engine: PrivacyEngine | None = None
        # Initial weights come from the root seed. torch's initializers draw from the
        # global CPU RNG, so seed it inside a fork: the caller's RNG state is restored.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.modules = self.build()
        self._federated = self.federated_modules()
        unknown = set(self._federated) - set(self.modules)
        if unknown:
            raise ValueError(
                f"federated modules {sorted(unknown)} are not modules of "
                f"{type(self).__name__}; choose from {sorted(self.modules)}"
            )
        self._check_personal()
        # What a client that has no private state yet starts from (not from whatever
        # the previous client left in this reused instance).
        self._initial_private: StateDict = self.private_state()

    @abstractmethod
    def build(self) -> dict[str, nn.Module]:
        """Create the networks, keyed by name (e.g. ``generator``, ``discriminator``)."""

    def federated_modules(self) -> list[str]:
        """Names of the modules whose tensors the server aggregates (default: all)."""
        return list(self.modules)

    def tensor_kind(self, module: str, key: str) -> TensorKind:
        """Whether tensor ``key`` of ``module`` is federated, private or frozen: what the
        task declares (``declared_kind``), except that the recipe's personal tensors
        (``params.personal``, FedPer) are private. Tasks override ``declared_kind``."""
        if self._personal and _matches(f"{module}.{key}", self._personal):
            return TensorKind.PRIVATE
        return self.declared_kind(module, key)

    def declared_kind(self, module: str, key: str) -> TensorKind:
        """The task's own split of its tensors into federated, private and frozen.

        Default: the tensors of ``federated_modules`` are federated, the others
        private; a task with a pretrained base (e.g. LoRA adapters on a frozen
        language model) overrides this per tensor.
        """
        return TensorKind.FEDERATED if module in self._federated else TensorKind.PRIVATE

    def _check_personal(self) -> None:
        """``params.personal`` must name tensors this task has, trainable and not all of them.

        Raises:
            ValueError: a name matches no tensor or a frozen one, or nothing stays federated.
        """
        if not self._personal:
            return
        names = [f"{n}.{k}" for n, m in self.modules.items() for k in m.state_dict()]
        for pattern in self._personal:
            matched = [name for name in names if _matches(name, (pattern,))]
            if not matched:
                # Module-level prefixes are what a person picks from; a few suffice.
                prefixes = sorted({name.rsplit(".", 1)[0] for name in names})
                raise ValueError(
                    f"task.params.personal names {pattern!r}, which is no tensor of "
                    f"{type(self).__name__}; choose tensors or prefixes such as "
                    f"{', '.join(prefixes[:12])}"
                )
            frozen = [
                n for n in matched if self.declared_kind(*n.split(".", 1)) == TensorKind.FROZEN
            ]
            if frozen:
                raise ValueError(
                    f"task.params.personal names {pattern!r}, but {frozen[0]} belongs to the "
                    "frozen base, which is never trained; choose trainable tensors"
                )
        if not any(self.tensor_kind(*n.split(".", 1)) == TensorKind.FEDERATED for n in names):
            raise ValueError(
                "task.params.personal makes every tensor private, so nothing is federated; "
                "keep some layers shared (FedPer shares the base, personalizes the head)"
            )

    def private_data_modules(self) -> list[str]:
        """Modules whose gradients read a client's examples; DP-SGD makes exactly these
        private (default: every module)."""
        return list(self.modules)

    def private_batches_per_step(self) -> int:
        """Batches of private examples one local step draws (each a DP-SGD step the
        accountant must count); default 1."""
        return 1

    def privacy_problems(self) -> list[str]:
        """Settings of this task that would leak private data past DP-SGD, each with its
        fix (e.g. a generator trained on the labels of real examples). Default: none."""
        return []

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context a client's local training runs in (``params.compute_dtype``).

        ``bfloat16``: ``torch.autocast`` with bfloat16 on the device of the task's weights
        (on a CPU with AVX-512 BF16, 1.45x a step of HuSCF-GAN's published network:
        ``benchmarks/compute_dtype.py``). No gradient scaler: bfloat16 keeps float32's
        exponent range. ``float32``: nothing changes.

        The cast cache is off: by default autocast keeps each weight's bfloat16 copy for
        the whole block, and the optimizer steps inside it update the weights in place,
        so every forward pass after the first would run on the block's first weights.
        """
        if self.params.compute_dtype == "float32":
            return contextlib.nullcontext()
        weights = (p for m in self.modules.values() for p in m.parameters())
        device = next(weights, torch.empty(0)).device.type
        return torch.autocast(device, dtype=torch.bfloat16, cache_enabled=False)

    def local_training(self, generator: torch.Generator) -> LocalTraining:
        """Open the batches/optimizers source for one ``train_local`` call."""
        if self.privacy_engine is None:
            return LocalTraining(generator)
        return self.privacy_engine.open(self, generator)

    @abstractmethod
    def train_local(
        self, data: ClientData, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        """Train the loaded networks for ``steps`` iterations on ``data``.

        Returns mean losses as ``{"loss/<name>": value}``. ``config`` carries
        per-round overrides from the strategy (e.g. a learning rate).
        """

    def fine_tune(self, data: Any, steps: int, generator: torch.Generator) -> dict[str, float]:
        """A client's evaluation-time fine-tune of the loaded model on its own ``data``:
        ``train_local`` as the client trains (in ``autocast()``), with gradients on even
        when the caller evaluates under ``torch.no_grad()``."""
        with torch.enable_grad(), self.autocast():
            return self.train_local(data, steps, generator, {})

    def functional_training(self) -> FunctionalTraining | None:
        """``train_local``'s step as a pure function for the vectorized backend, or None
        when this task has none (its clients then train sequentially; see
        ``fedgen.tasks.functional``)."""
        return None

    def why_no_functional_training(self) -> str:
        """Why ``functional_training`` is None for these params, and what to change (the
        vectorized backend logs it); tasks that can say more than the default override it."""
        return f"task {type(self).__name__} has no functional training step for its params"

    @abstractmethod
    def sample(self, condition: Any, generator: torch.Generator) -> Any:
        """A batch of this task's modality for ``condition`` (see ``conditioning``).

        Image tasks conditioned on a class take a LongTensor of labels and return
        images in [0, 1] of shape ``(len(labels), *image_shape)``.
        """

    # -- state exchange ------------------------------------------------------

    def _tensors(self, kind: TensorKind) -> StateDict:
        return {
            f"{name}.{key}": value
            for name, module in self.modules.items()
            for key, value in module.state_dict().items()
            if self.tensor_kind(name, key) == kind
        }

    def federated_state(self) -> StateDict:
        """Detached copies of the federated tensors, keyed ``<module>.<tensor>``."""
        return {k: v.detach().clone() for k, v in self._tensors(TensorKind.FEDERATED).items()}

    def private_state(self) -> StateDict:
        """Detached copies of the tensors that stay on the client between rounds."""
        return {k: v.detach().clone() for k, v in self._tensors(TensorKind.PRIVATE).items()}

    def initial_private_state(self) -> StateDict:
        """The private tensors as built: a client's start before it has its own."""
        return {k: v.clone() for k, v in self._initial_private.items()}

    def frozen_tensors(self) -> StateDict:
        """The frozen base's tensors themselves (not copies; empty without a base). The
        engine records their digest in checkpoints instead of the tensors."""
        return self._tensors(TensorKind.FROZEN)

    def load_state(self, state: StateDict) -> None:
        """Load tensors keyed ``<module>.<tensor>``: any subset of the task's tensors (the
        federated ones, a client's private ones); a frozen base is never loaded here."""
        by_module: dict[str, dict[str, torch.Tensor]] = {}
        for full_key, value in state.items():
            name, _, key = full_key.partition(".")
            by_module.setdefault(name, {})[key] = value
        for name, tensors in by_module.items():
            if name not in self.modules:
                raise KeyError(f"state holds tensors of unknown module {name!r}")
            frozen = [k for k in tensors if self.tensor_kind(name, k) == TensorKind.FROZEN]
            if frozen:
                raise KeyError(f"{name}.{frozen[0]} belongs to the frozen base; it is never loaded")
            result = self.modules[name].load_state_dict(tensors, strict=False)
            if result.unexpected_keys:
                raise KeyError(
                    f"state holds {name}.{result.unexpected_keys[0]}, not a tensor of {name}"
                )

    def num_parameters(self) -> dict[str, int]:
        """Parameter count per module."""
        return {n: sum(p.numel() for p in m.parameters()) for n, m in self.modules.items()}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``<module>.<key>`` is one of ``patterns`` or lies under one (``a.b`` covers
    ``a.b.weight``, never ``a.bc``)."""
    return any(name == p or name.startswith(p + ".") for p in patterns)
