"""Text federations: byte tokens, per-client text split by theme, and the windows it yields.

``make_federated_text`` gives each client one or a few whole themes of a
``TextSource`` (non-IID by topic), holds back the last ``heldout_fraction``
of each client's own documents (after a seeded shuffle) for its perplexity,
and tokenizes the rest into one stream from which ``TextClientData.batches``
draws random windows. Within each part, documents keep the source's order
and are joined with the source's separator, so a window reads as the corpus does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.data.text_sources import TextSource, get_text_source
from fedgen.errors import ConfigError
from fedgen.registry import PARTITIONERS
from fedgen.seeding import numpy_rng


class Tokenizer(Protocol):
    """Text to token ids and back; a BPE tokenizer with these four members can be passed."""

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> torch.Tensor:
        """A 1-D integer tensor of ids in ``[0, vocab_size)``."""
        ...

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to download or train."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        """``uint8`` ids of shape ``(len(text.encode()),)``."""
        return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy())

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The text of ``ids``; a character cut by a window's edge decodes as U+FFFD."""
        ids = torch.as_tensor(ids)
        if ids.dim() != 1:
            raise ValueError(f"decode takes a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > 255):
            raise ValueError(
                f"byte ids lie in [0, 255], got [{int(ids.min())}, {int(ids.max())}]: "
                "decode them with the tokenizer that made them"
            )
        return bytes(ids.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TextClientData:
    """The private text of client ``client_id``: training tokens and its held-out tokens.

    ``tokens`` and ``heldout`` are 1-D integer tensors (``uint8`` for bytes).
    ``num_examples``, by which FedAvg weights clients, counts training tokens:
    every token is the target of one next-token prediction, whatever the window.
    """

    client_id: int
    themes: tuple[str, ...]
    tokens: torch.Tensor
    heldout: torch.Tensor
    num_documents: int = 0
    num_heldout_documents: int = 0

    @property
    def num_examples(self) -> int:
        return int(self.tokens.numel())

    def batches(
        self, batch_size: int, generator: torch.Generator, block_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless ``(x, y)``, ``int64`` ``(batch_size, block_size)``, ``y`` = ``x`` shifted by one.

        Each row is a window at a start drawn uniformly from ``generator``, so
        the stream is reproducible from the client's seed. Raises
        ``ConfigError`` at once when there are fewer than ``block_size + 1`` tokens.
        """
        _check_positive(batch_size=batch_size, block_size=block_size)
        n = self.num_examples
        if n == 0:
            raise ConfigError(
                f"text client {self.client_id} (themes {list(self.themes)}) holds no training "
                "text; give it more themes or documents, or use fewer clients"
            )
        if n <= block_size:
            raise ConfigError(
                f"text client {self.client_id} holds {n} training tokens, fewer than "
                f"block_size + 1 = {block_size + 1}; lower block_size or give it more text "
                "(a larger max_bytes_per_client or themes_per_client)"
            )
        return self._windows(batch_size, generator, block_size)

    def _windows(
        self, batch_size: int, generator: torch.Generator, block_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        offsets = torch.arange(block_size + 1)
        while True:
            # Starts in [0, n - block_size - 1]: the last window ends on the last token.
            starts = torch.randint(
                0, self.num_examples - block_size, (batch_size,), generator=generator
            )
            windows = self.tokens[starts[:, None] + offsets].long()  # (B, block_size + 1)
            yield windows[:, :-1], windows[:, 1:]

    def heldout_windows(self, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-overlapping ``(x, y)`` over the held-out tokens, ``int64`` ``(W, block_size)``.

        Window ``i`` predicts held-out tokens ``i*block_size + 1 .. (i+1)*block_size``,
        so each is scored once; a tail shorter than ``block_size`` is left out, and
        a client with too little held-out text gives ``W = 0``.
        """
        _check_positive(block_size=block_size)
        count = max(int(self.heldout.numel()) - 1, 0) // block_size
        used = self.heldout[: count * block_size + 1].long()
        return used[:-1].reshape(count, block_size), used[1:].reshape(count, block_size)


def heldout_problems(clients: list[TextClientData], block_size: int) -> list[str]:
    """Why held-out perplexity could not be measured for every client ([] if it can): each
    client needs one window of ``block_size + 1`` held-out tokens. Checked before round 1,
    since the first evaluation would fail and keep its round from being checkpointed."""
    short = [c.client_id for c in clients if c.heldout.numel() <= block_size]
    if not short:
        return []
    return [
        f"text clients {short} hold fewer than block_size + 1 = {block_size + 1} held-out "
        "tokens, so their held-out perplexity cannot be measured (a client keeping one "
        "document holds none out); raise data.partition.params.heldout_fraction (> 0) or "
        "max_bytes_per_client, use fewer data.num_clients, or lower task.params.block_size"
    ]


@dataclass(frozen=True)
class FederatedText:
    """Every client's text, the pooled held-out text for central evaluation, and the settings.

    ``unassigned_themes`` are the source's themes no client holds.
    """

    source: str
    sha256: str
    tokenizer: Tokenizer
    clients: list[TextClientData]
    unassigned_themes: tuple[str, ...]
    themes_per_client: int
    heldout_fraction: float
    max_bytes_per_client: int | None
    seed: int

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def test_windows(self, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every client's ``heldout_windows`` in client order (no window spans two clients)."""
        parts = [client.heldout_windows(block_size) for client in self.clients]
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary of who holds which themes and how many tokens."""
        return {
            "modality": "text",
            "source": self.source,
            "sha256": self.sha256,
            "tokenizer": self.tokenizer.name,
            "vocab_size": self.vocab_size,
            "num_clients": self.num_clients,
            "themes_per_client": self.themes_per_client,
            "heldout_fraction": self.heldout_fraction,
            "max_bytes_per_client": self.max_bytes_per_client,
            "seed": self.seed,
            "sizes": [c.num_examples for c in self.clients],
            "clients": [
                {
                    "client_id": c.client_id,
                    "themes": list(c.themes),
                    "documents": c.num_documents,
                    "heldout_documents": c.num_heldout_documents,
                    "train_tokens": c.num_examples,
                    "heldout_tokens": int(c.heldout.numel()),
                }
                for c in self.clients
            ],
            "unassigned_themes": list(self.unassigned_themes),
        }


def assign_themes(
    themes: Sequence[str], num_clients: int, themes_per_client: int, rng: np.random.Generator
) -> list[tuple[str, ...]]:
    """The themes of each client: ``themes_per_client`` distinct ones, drawn by ``rng``.

    No theme goes to two clients while ``num_clients * themes_per_client`` themes
    exist. With more clients than themes, the seeded order of themes repeats, so
    each theme goes to as many clients as evenly as it can. Between those two
    cases there are too few themes: a ``ConfigError`` says what to change.
    """
    _check_positive(num_clients=num_clients, themes_per_client=themes_per_client)
    count, needed = len(themes), num_clients * themes_per_client
    if themes_per_client > count:
        raise ConfigError(
            f"themes_per_client is {themes_per_client} but the source has {count} themes; "
            f"use themes_per_client <= {count}"
        )
    if num_clients <= count < needed:
        raise ConfigError(
            f"too few themes: {num_clients} clients x {themes_per_client} themes each need "
            f"{needed} different themes but the source has {count}; use themes_per_client <= "
            f"{count // num_clients} or at most {count // themes_per_client} clients, or a source "
            f"with more themes (themes are shared only with more clients than themes)"
        )
    order = rng.permutation(count)
    slots = [themes[order[k % count]] for k in range(needed)]
    # Any themes_per_client consecutive slots of a repeated permutation are distinct.
    return [
        tuple(slots[i * themes_per_client : (i + 1) * themes_per_client])
        for i in range(num_clients)
    ]


def make_federated_text(
    source: str | TextSource,
    num_clients: int,
    themes_per_client: int,
    seed: int,
    heldout_fraction: float = 0.1,
    max_bytes_per_client: int | None = None,
    *,
    data_dir: Path | str | None = None,
    tokenizer: Tokenizer | None = None,
) -> FederatedText:
    """Load ``source`` and give each of ``num_clients`` clients ``themes_per_client`` whole themes.

    Themes are drawn with ``numpy_rng(seed, "text-themes")`` (see ``assign_themes``);
    the documents of a theme held by several clients are dealt among them at
    random. Each client shuffles its documents with ``numpy_rng(seed,
    "text-heldout", client_id)``, keeps at most ``max_bytes_per_client`` UTF-8
    bytes of them in that order (cutting the last one at a character), and
    holds back the last ``round(heldout_fraction * n)`` of its ``n`` documents
    (at least 1 when ``heldout_fraction > 0``, always leaving one to train on).
    ``tokenizer`` defaults to ``ByteTokenizer``. Raises ``DataMissingError`` /
    ``ChecksumError`` from the source and ``ConfigError`` for settings that
    leave a client without text.
    """
    _check_positive(num_clients=num_clients, themes_per_client=themes_per_client)
    if not 0.0 <= heldout_fraction < 1.0:
        raise ConfigError(
            f"heldout_fraction is {heldout_fraction}; use a fraction in [0, 1), e.g. 0.1"
        )
    if max_bytes_per_client is not None:
        _check_positive(max_bytes_per_client=max_bytes_per_client)
    text_source = get_text_source(source) if isinstance(source, str) else source
    tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
    themes = text_source.load(data_dir)
    assignment = assign_themes(
        list(themes), num_clients, themes_per_client, numpy_rng(seed, "text-themes")
    )
    shares = _deal_documents(themes, assignment, seed)
    clients = []
    for client_id, (names, documents) in enumerate(zip(assignment, shares, strict=True)):
        if not documents:
            counts = ", ".join(
                f"{t!r}: {len(themes[t])} documents for {sum(t in a for a in assignment)} clients"
                for t in names
            )
            raise ConfigError(
                f"text client {client_id} holds no text: its themes have fewer documents than "
                f"clients sharing them ({counts}); use at most {len(themes)} clients, more "
                "themes_per_client, or a source with more documents per theme"
            )
        order = numpy_rng(seed, "text-heldout", client_id).permutation(len(documents))
        kept = _cap_bytes([(int(i), documents[i]) for i in order], max_bytes_per_client)
        held = 0
        if heldout_fraction > 0:
            held = min(max(round(heldout_fraction * len(kept)), 1), len(kept) - 1)
        train, heldout = sorted(kept[: len(kept) - held]), sorted(kept[len(kept) - held :])
        sep = text_source.separator
        clients.append(
            TextClientData(
                client_id=client_id,
                themes=names,
                tokens=tokenizer.encode("".join(text + sep for _, text in train)),
                heldout=tokenizer.encode("".join(text + sep for _, text in heldout)),
                num_documents=len(train),
                num_heldout_documents=len(heldout),
            )
        )
    used = {t for names in assignment for t in names}
    return FederatedText(
        source=text_source.name,
        sha256=text_source.sha256,
        tokenizer=tokenizer,
        clients=clients,
        unassigned_themes=tuple(t for t in themes if t not in used),
        themes_per_client=themes_per_client,
        heldout_fraction=heldout_fraction,
        max_bytes_per_client=max_bytes_per_client,
        seed=seed,
    )


def _deal_documents(
    themes: dict[str, list[str]], assignment: list[tuple[str, ...]], seed: int
) -> list[list[str]]:
    """Each client's documents, theme by theme in its assigned order."""
    holders: dict[str, list[int]] = {}
    for client_id, names in enumerate(assignment):
        for theme in names:
            holders.setdefault(theme, []).append(client_id)
    share: dict[tuple[str, int], list[str]] = {}
    for theme, clients in holders.items():
        docs = themes[theme]
        if len(clients) == 1:
            share[theme, clients[0]] = docs
            continue
        order = numpy_rng(seed, "text-share", theme).permutation(len(docs))
        for client_id, part in zip(clients, np.array_split(order, len(clients)), strict=True):
            share[theme, client_id] = [docs[i] for i in np.sort(part)]
    return [[d for t in names for d in share[t, i]] for i, names in enumerate(assignment)]


def _cap_bytes(documents: list[tuple[int, str]], limit: int | None) -> list[tuple[int, str]]:
    """The longest prefix of ``documents`` within ``limit`` UTF-8 bytes, the last one cut to fit."""
    if limit is None:
        return documents
    kept, room = [], limit
    for index, text in documents:
        data = text.encode("utf-8")
        if len(data) > room:
            # Cutting inside a multi-byte character would leave a partial one: drop it.
            cut = data[:room].decode("utf-8", errors="ignore")
            if cut:
                kept.append((index, cut))
            break
        kept.append((index, text))
        room -= len(data)
    if not kept:
        raise ConfigError(
            f"max_bytes_per_client is {limit}: too small to hold one character; use at least 4"
        )
    return kept


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")


@PARTITIONERS.register("themes")
class ThemePartition:
    """How a text source is split: whole themes per client (``make_federated_text``).

    Text is non-IID by topic: each client holds ``themes_per_client`` themes (a
    fortune file, a book of the Bible) and keeps ``heldout_fraction`` of its own
    documents for its held-out perplexity.
    """

    class Params(BaseModel):
        """The recipe's ``data.partition.params`` of ``themes``."""

        model_config = ConfigDict(extra="forbid")

        themes_per_client: int = Field(1, ge=1)
        heldout_fraction: float = Field(0.1, ge=0, lt=1)
        #: Cap on each client's text in UTF-8 bytes (None: all of its themes).
        max_bytes_per_client: int | None = Field(None, ge=1)

    def __init__(
        self,
        themes_per_client: int = 1,
        heldout_fraction: float = 0.1,
        max_bytes_per_client: int | None = None,
    ) -> None:
        self.themes_per_client = themes_per_client
        self.heldout_fraction = heldout_fraction
        self.max_bytes_per_client = max_bytes_per_client

    def federate(
        self,
        source: str,
        num_clients: int,
        seed: int,
        data_dir: Path | str | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> FederatedText:
        """The federation of ``source`` over ``num_clients`` clients, tokenized by
        ``tokenizer`` (default ``ByteTokenizer``)."""
        return make_federated_text(
            source,
            num_clients,
            self.themes_per_client,
            seed,
            self.heldout_fraction,
            self.max_bytes_per_client,
            data_dir=data_dir,
            tokenizer=tokenizer,
        )
