"""LoRA fine-tuning of a pretrained causal language model (task ``lm_lora``).

LoRA (Hu et al., ICLR 2022) freezes the base weights ``W`` and learns a low-rank
update ``W + (alpha / r) B A`` with ``A`` (r x in) and ``B`` (out x r); ``peft``
injects the adapters into a ``transformers`` model (default base: SmolLM2-135M,
see ``fedgen.tasks.lm_base``). Only adapters train and only adapters travel: the
base is a frozen tensor set, loaded once per process, never sent or checkpointed.

Two federated methods (``method``):

- ``fedit``: FedIT (Zhang et al., ICASSP 2024): A and B are federated and averaged
  separately. The mean of products is not the product of means, so the average
  is not the average of the clients' updates ``B_i A_i``.
- ``ffa``: FFA-LoRA (Sun et al., ICLR 2024): A is drawn from a seed every client
  derives from the task's seed and stays frozen; only B trains and is sent. With
  A shared, averaging B averages the updates ``B_i A`` exactly, and each round sends
  B only (``out x r`` per adapter instead of ``(in + out) x r``).

A FedPer-style split (Arivazhagan et al. 2019) keeps the adapters of
``personal_layers`` (block indices) or of ``private_modules`` (e.g. ``v_proj``)
private to each client. Loading a global state resets them to their initial
value (B = 0: the adapter adds nothing), so a client's first round never starts
from another client's private adapters; its own are loaded after.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from fedgen.errors import ConfigError
from fedgen.modality import DataSpec, TensorKind
from fedgen.registry import TASKS
from fedgen.seeding import global_rng_from, torch_generator
from fedgen.tasks.base import TaskParams
from fedgen.tasks.lm_base import (
    BaseModelError,
    HfTokenizer,
    context_length,
    load_base_model,
    load_tokenizer,
    locate_base,
    shared_module_tree,
)
from fedgen.tasks.text_task import TextTask
from fedgen.types import StateDict

#: An adapter tensor's key: ``...<block index>...<module>.lora_<A|B>.<adapter>.weight``.
_ADAPTER = re.compile(r"(?:^|\.)([^.]+)\.lora_([AB])\.")
_BLOCK = re.compile(r"\.(\d+)\.")


class LoraLmParams(TaskParams):
    """Hyper-parameters of LoRA fine-tuning; ``base_path`` None is the packaged SmolLM2."""

    #: A folder a transformers causal LM was saved to, or a .gguf file.
    base_path: str | None = None
    method: Literal["fedit", "ffa"] = "fedit"
    rank: int = Field(8, ge=1)
    #: LoRA's alpha: the update is scaled by alpha / rank.
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    #: Names of the base's linear layers that get adapters (last name component).
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    #: Transformer blocks (0-based) whose adapters stay private to each client.
    personal_layers: list[int] = Field(default_factory=list)
    #: Target modules whose adapters stay private to each client, in every block.
    private_modules: list[str] = Field(default_factory=list)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    #: Tokens per training window and per held-out window.
    block_size: int = Field(128, ge=2)
    #: Tokens generated after each prompt by ``sample``.
    max_new_tokens: int = Field(40, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_k: int = Field(40, ge=0)


@TASKS.register("lm_lora")
class LoraLmTask(TextTask):
    """Federated LoRA fine-tuning of a pretrained causal LM (see module docstring)."""

    Params = LoraLmParams
    task_name = "lm_lora"
    # The logits of a 49k vocabulary take 200 kB per token.
    nll_batch = 8
    params: LoraLmParams

    def __init__(self, params: LoraLmParams, vocab_size: int, seed: int) -> None:
        self.seed = seed
        self.location = locate_base(params.base_path)
        # Task.__init__ records the initial private state (its load_state is not used there).
        self._initial_private: StateDict = {}
        super().__init__(params, vocab_size, seed)

    @classmethod
    def tokenizer(cls, params: TaskParams) -> HfTokenizer:
        """The base model's own tokenizer: client text must be tokenized with it."""
        assert isinstance(params, LoraLmParams)
        return load_tokenizer(locate_base(params.base_path))

    @classmethod
    def check_spec(cls, params: TaskParams, spec: DataSpec) -> None:
        assert isinstance(params, LoraLmParams)
        tokenizer = cls.tokenizer(params)
        if spec.vocab_size != tokenizer.vocab_size:
            raise ConfigError(
                f"the data was tokenized with a vocabulary of {spec.vocab_size} ids, but the "
                f"base model's tokenizer ({tokenizer.name}) has {tokenizer.vocab_size}: tokenize "
                "the clients' text with LoraLmTask.tokenizer(params) (the experiment does)"
            )

    # -- the networks ---------------------------------------------------------

    def build(self) -> dict[str, nn.Module]:
        from peft import LoraConfig, get_peft_model

        p = self.params
        base = load_base_model(self.location)
        self._check_base(base)
        config = LoraConfig(
            r=p.rank,
            lora_alpha=p.alpha,
            lora_dropout=p.dropout,
            target_modules=list(p.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            # peft 0.21 asks transformers 5 a question under its deprecated name; only noise.
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            lm = get_peft_model(shared_module_tree(base), config)
        # A from the task's seed alone, as peft draws it (Kaiming-uniform, a = sqrt(5)):
        # every client and the server build the same A, whatever the global RNG holds.
        gen = torch_generator(self.seed, "lora-A")
        for name, param in sorted(lm.named_parameters()):
            if ".lora_A." in name:
                with torch.no_grad():
                    nn.init.kaiming_uniform_(param, a=math.sqrt(5), generator=gen)
                if p.method == "ffa":
                    param.requires_grad_(False)
        return {"lm": lm}

    def _check_base(self, base: nn.Module) -> None:
        """Refuse settings the base model cannot honour, each with what it can do."""
        p = self.params
        tokenizer = load_tokenizer(self.location)
        rows = base.get_input_embeddings().num_embeddings  # type: ignore[operator]
        if tokenizer.vocab_size > rows:
            raise BaseModelError(
                f"the tokenizer of {self.location.key} has {tokenizer.vocab_size} ids but the "
                f"model embeds only {rows}: they do not belong together; save the model's own "
                "tokenizer beside it (tokenizer.save_pretrained)"
            )
        context = context_length(base)
        if context is not None and p.block_size > context:
            raise ConfigError(
                f"task.params.block_size is {p.block_size} but {self.location.name} reads at "
                f"most {context} tokens; use block_size <= {context}"
            )
        # Layers holding a 2-D weight (linear, GPT-2's Conv1D). Not embeddings: peft gives
        # them differently named adapters (lora_embedding_A/B) with A and B roles swapped.
        adaptable = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in base.named_modules()
                if not any(True for _ in module.children())
                and not isinstance(module, nn.Embedding)
                and getattr(module, "weight", None) is not None
                and module.weight.dim() == 2
            }
        )
        missing = [t for t in p.target_modules if t not in adaptable]
        if missing:
            raise ConfigError(
                f"task.params.target_modules {missing} are not layers of {self.location.name}; "
                f"choose from {', '.join(adaptable)}"
            )
        stray = [m for m in p.private_modules if m not in p.target_modules]
        if stray:
            raise ConfigError(
                f"task.params.private_modules {stray} carry no adapters; choose among "
                f"target_modules {list(p.target_modules)}"
            )
        blocks = int(getattr(base.config, "num_hidden_layers", 0) or 0)
        outside = [i for i in p.personal_layers if not 0 <= i < blocks]
        if blocks and outside:
            raise ConfigError(
                f"task.params.personal_layers {outside} are not blocks of {self.location.name}; "
                f"it has blocks 0 to {blocks - 1}"
            )

    def declared_kind(self, module: str, key: str) -> TensorKind:
        """The base is frozen; adapters are federated, or private per the FedPer split;
        FFA-LoRA's A is frozen (fixed, and the same on every client by its seed)."""
        adapter = _ADAPTER.search(key)
        if adapter is None:
            return TensorKind.FROZEN
        target, matrix = adapter.groups()
        if self.params.method == "ffa" and matrix == "A":
            return TensorKind.FROZEN
        blocks = _BLOCK.findall(key[: adapter.start()] + ".")
        if target in self.params.private_modules or (
            blocks and int(blocks[-1]) in self.params.personal_layers
        ):
            return TensorKind.PRIVATE
        return TensorKind.FEDERATED

    def load_state(self, state: StateDict) -> None:
        """Load tensors as ``Task.load_state``; a state holding federated tensors (the
        global state) first resets private adapters to their initial value."""
        if self._initial_private and any(
            self.tensor_kind(*key.split(".", 1)) == TensorKind.FEDERATED for key in state
        ):
            super().load_state(self._initial_private)
        super().load_state(state)

    def __deepcopy__(self, memo: dict[int, Any]) -> LoraLmTask:
        # The frozen base is shared, not copied: a process-pool worker's copy of the task
        # (or any deepcopy) trains its own adapters on the same read-only base tensors.
        lm = self.modules["lm"]
        for name, tensor in [*lm.named_parameters(), *lm.named_buffers()]:
            if self.tensor_kind("lm", name) == TensorKind.FROZEN and not tensor.requires_grad:
                memo[id(tensor)] = tensor
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, copy.deepcopy(value, memo))
        return new

    # -- training and evaluation ------------------------------------------------

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.modules["lm"](input_ids=x, use_cache=False).logits
        return logits

    def train_local(
        self, data: Any, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        p = self.params
        lm = self.modules["lm"]
        trainable = [param for param in lm.parameters() if param.requires_grad]
        opt = torch.optim.AdamW(
            trainable, lr=float(config.get("lr", p.lr)), betas=p.betas, weight_decay=0.0
        )
        batches = data.batches(p.batch_size, generator, p.block_size)
        total = 0.0
        # LoRA dropout draws from the global RNG: seed it from the client's generator.
        with global_rng_from(generator):
            lm.train()
            for _ in range(steps):
                x, y = next(batches)
                loss = self.loss(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
        lm.eval()
        return {"loss/lm": total / max(steps, 1)}

    @torch.no_grad()
    def sample(self, condition: Any, generator: torch.Generator) -> list[str]:
        """One continuation per prompt in ``condition`` (a list of strings; a bare string
        is a ``TypeError``), as text; it ends early where the model writes its end-of-text
        token."""
        prompts = self.prompts(condition)
        p, tok = self.params, load_tokenizer(self.location)
        lm = self.modules["lm"]
        lm.eval()
        start = tok.hf.bos_token_id if tok.hf.bos_token_id is not None else tok.hf.eos_token_id
        out = []
        for prompt in prompts:
            ids = tok.encode(prompt).long()[-(p.block_size - 1) :]
            if ids.numel() == 0:
                ids = torch.tensor([start])
            # generate() samples from the global RNG: seed it from ``generator``.
            with global_rng_from(generator):
                written = lm.generate(  # type: ignore[operator]
                    input_ids=ids.view(1, -1),
                    attention_mask=torch.ones(1, ids.numel(), dtype=torch.long),
                    max_new_tokens=p.max_new_tokens,
                    do_sample=True,
                    temperature=p.temperature,
                    top_k=p.top_k or None,
                    pad_token_id=tok.hf.eos_token_id,
                )
            out.append(str(tok.hf.decode(written[0, ids.numel() :], skip_special_tokens=True)))
        return out
