"""A small decoder-only transformer over bytes, trained from scratch (task ``byte_gpt``).

The shape of GPT-2 (Radford et al. 2019) at the size of nanoGPT's character
models: token and position embeddings, pre-LayerNorm blocks of causal
self-attention and an MLP, a output head. Over UTF-8 bytes (vocabulary
256) it needs no tokenizer file, so it is the fast text task for tests and the
from-scratch recipe; a pretrained model with LoRA adapters is the other text
family. LayerNorm only (no BatchNorm), so DP-SGD and vectorized clients stay
possible.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedgen.registry import TASKS
from fedgen.seeding import global_rng_from
from fedgen.tasks.base import TaskParams
from fedgen.tasks.text_task import TextTask


class ByteGptParams(TaskParams):
    """Hyper-parameters of the byte-level transformer."""

    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    #: Context length in bytes (tokens).
    block_size: int = Field(64, ge=2)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    #: Width of the residual stream; a multiple of ``heads``.
    width: int = Field(64, ge=8)
    dropout: float = Field(0.0, ge=0, lt=1)
    #: Bytes generated after each prompt by ``sample``.
    max_new_tokens: int = Field(80, ge=1)
    temperature: float = Field(0.8, gt=0)
    #: Sample among the ``top_k`` likeliest next bytes (0: all).
    top_k: int = Field(40, ge=0)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention that sees only earlier positions."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape  # (batch, time, width)
        q, k, v = self.qkv(x).split(c, dim=2)
        # (B, heads, T, head width)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ByteGpt(nn.Module):
    """The network: token ids (B, T) in, next-token logits (B, T, vocab) out."""

    def __init__(self, vocab: int, p: ByteGptParams) -> None:
        super().__init__()
        if p.width % p.heads:
            raise ValueError(f"width {p.width} is not a multiple of heads {p.heads}")
        self.block_size = p.block_size
        self.tokens = nn.Embedding(vocab, p.width)
        self.positions = nn.Embedding(p.block_size, p.width)
        self.blocks = nn.ModuleList(Block(p.width, p.heads, p.dropout) for _ in range(p.layers))
        self.ln = nn.LayerNorm(p.width)
        # Untied from the embedding (GPT-2 ties them): a tied pair would be one tensor under
        # two names in every update, sent and averaged twice.
        self.head = nn.Linear(p.width, vocab, bias=False)
        self.apply(self._init)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                # Residual projections scaled by depth (GPT-2's initialisation).
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * p.layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"a context of {t} tokens exceeds block_size {self.block_size}")
        x = self.tokens(idx) + self.positions(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))  # (B, T, vocab)


@TASKS.register("byte_gpt")
class ByteGptTask(TextTask):
    """Federated language modelling of raw text with ``ByteGpt`` (see module docstring)."""

    Params = ByteGptParams
    task_name = "byte_gpt"
    params: ByteGptParams

    def build(self) -> dict[str, nn.Module]:
        return {"model": ByteGpt(self.vocab_size, self.params)}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.modules["model"](x)
        return logits

    def train_local(
        self, data: Any, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        p = self.params
        model = self.modules["model"]
        opt = torch.optim.AdamW(
            model.parameters(), lr=float(config.get("lr", p.lr)), betas=p.betas, weight_decay=0.0
        )
        model.train()
        batches = data.batches(p.batch_size, generator, p.block_size)
        total = 0.0
        # Dropout draws from the global RNG, which no checkpoint holds: seed it from the
        # client's generator so a resumed run repeats the same masks. Without dropout the
        # generator is not drawn from, so such runs keep their batches of before.
        with global_rng_from(generator) if p.dropout > 0 else contextlib.nullcontext():
            for _ in range(steps):
                x, y = next(batches)
                loss = self.loss(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
        return {"loss/lm": total / max(steps, 1)}

    @torch.no_grad()
    def sample(self, condition: Any, generator: torch.Generator) -> list[str]:
        """One continuation per prompt in ``condition`` (a list of strings; a bare string
        is a ``TypeError``), as text."""
        from fedgen.data.text_data import ByteTokenizer

        prompts = self.prompts(condition)
        p, tok = self.params, ByteTokenizer()
        model = self.modules["model"]
        model.eval()
        out = []
        for prompt in prompts:
            ids = tok.encode(prompt).long()[-(p.block_size - 1) :]
            if ids.numel() == 0:
                ids = torch.tensor([ord("\n")])
            idx = ids.view(1, -1)
            for _ in range(p.max_new_tokens):
                logits = model(idx[:, -p.block_size :])[0, -1] / p.temperature
                if p.top_k:
                    kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
                idx = torch.cat([idx, nxt.view(1, 1)], dim=1)
            out.append(tok.decode(idx[0, ids.numel() :]))
        return out
