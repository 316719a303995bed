"""Text federations on the real corpora: themes per client, held-out text, windows, tokens."""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
import torch

from fedgen.data.text_data import (
    ByteTokenizer,
    FederatedText,
    TextClientData,
    assign_themes,
    make_federated_text,
)
from fedgen.data.text_sources import FORTUNES, KJV, PYTHON_DOCS
from fedgen.errors import ConfigError
from fedgen.seeding import numpy_rng

CAP = 20_000  # bytes per client: keeps every federation here small


def _documents(data: torch.Tensor, separator: str) -> list[str]:
    """The documents of a client's token stream: fortunes end in a line "%", verses in "\\n"."""
    text = ByteTokenizer().decode(data)
    if separator:
        return re.split(f"(?m)^{re.escape(separator)}", text)[:-1]
    return [line + "\n" for line in text.split("\n")[:-1]]


def test_byte_tokenizer_round_trips_real_utf8() -> None:
    # Prepare: law's fortunes hold multi-byte characters.
    tokenizer = ByteTokenizer()
    text = "".join(FORTUNES.load()["law"])
    assert len(text.encode()) > len(text)

    # Execute
    ids = tokenizer.encode(text)

    # Assert
    assert tokenizer.vocab_size == 256 and tokenizer.name == "bytes"
    assert ids.dtype == torch.uint8 and ids.shape == (len(text.encode()),)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids.tolist()) == text
    assert tokenizer.encode("").shape == (0,) and tokenizer.decode([]) == ""
    assert tokenizer.decode(tokenizer.encode("é")[:1]) == "\ufffd"
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        tokenizer.decode([72, 256])
    with pytest.raises(ValueError, match="1-D"):
        tokenizer.decode(torch.zeros(2, 2, dtype=torch.int64))


def test_assign_themes_disjoint_when_themes_suffice() -> None:
    themes = list(KJV.load())
    first = assign_themes(themes, 10, 6, np.random.default_rng(3))
    assert all(len(set(names)) == 6 for names in first)
    assert len({t for names in first for t in names}) == 60
    assert assign_themes(themes, 10, 6, np.random.default_rng(3)) == first
    assert assign_themes(themes, 10, 6, np.random.default_rng(4)) != first


def test_assign_themes_shares_evenly_with_more_clients_than_themes() -> None:
    themes = [f"t{i}" for i in range(7)]
    assignment = assign_themes(themes, 9, 3, np.random.default_rng(0))
    assert all(len(set(names)) == 3 for names in assignment)
    uses = Counter(t for names in assignment for t in names)
    assert set(uses) == set(themes) and sum(uses.values()) == 27
    assert max(uses.values()) - min(uses.values()) <= 1


def test_too_few_themes_says_what_to_change() -> None:
    with pytest.raises(ConfigError) as caught:
        make_federated_text("kjv", 10, 7, seed=0)
    message = str(caught.value)
    assert "need 70 different themes but the source has 66" in message
    assert "themes_per_client <= 6" in message and "at most 9 clients" in message
    with pytest.raises(ConfigError, match="themes_per_client <= 43"):
        make_federated_text("fortunes", 50, 44, seed=0)


def test_clients_hold_whole_disjoint_themes_and_their_own_heldout() -> None:
    # Prepare
    themes = FORTUNES.load()

    # Execute: no byte cap, so every client holds all of its themes' fortunes.
    fed = make_federated_text("fortunes", 8, 2, seed=11)

    # Assert: non-IID by theme, no theme on two clients.
    assert fed.num_clients == 8 and [c.client_id for c in fed.clients] == list(range(8))
    for a, b in combinations(fed.clients, 2):
        assert not set(a.themes) & set(b.themes)
    assert set(fed.unassigned_themes) == set(themes) - {t for c in fed.clients for t in c.themes}
    for client in fed.clients:
        train = _documents(client.tokens, "%\n")
        heldout = _documents(client.heldout, "%\n")
        own = [d for t in client.themes for d in themes[t]]
        # Training and held-out together are exactly the client's themes, and never overlap.
        assert Counter(train) + Counter(heldout) == Counter(own)
        # A text on both sides is a fortune printed twice in the client's files.
        own_counts = Counter(own)
        assert all(own_counts[d] >= 2 for d in set(train) & set(heldout))
        assert len(heldout) == max(round(0.1 * len(own)), 1)
        assert client.num_documents == len(train)
        assert client.num_heldout_documents == len(heldout)
        assert client.num_examples == sum(len(d.encode()) + 2 for d in train)


def test_same_seed_same_federation_other_seed_other() -> None:
    make = lambda seed: make_federated_text("kjv", 6, 2, seed, max_bytes_per_client=CAP)  # noqa: E731
    first, again, other = make(5), make(5), make(6)
    assert [c.themes for c in first.clients] == [c.themes for c in again.clients]
    for a, b in zip(first.clients, again.clients, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.heldout, b.heldout)
    assert [c.themes for c in first.clients] != [c.themes for c in other.clients]
    assert first.to_json() == again.to_json()


def test_byte_cap_and_heldout_fraction() -> None:
    themes = KJV.load()
    fed = make_federated_text("kjv", 5, 2, seed=1, heldout_fraction=0.2, max_bytes_per_client=CAP)
    for client in fed.clients:
        # kjv joins verses with no separator, so tokens are the documents' bytes.
        own = sum(len(d.encode()) for t in client.themes for d in themes[t])
        assert client.num_examples + client.heldout.numel() == min(own, CAP)
        documents = client.num_documents + client.num_heldout_documents
        assert client.num_heldout_documents == round(0.2 * documents)
    none_held = make_federated_text("kjv", 2, 1, seed=1, heldout_fraction=0.0)
    assert all(c.heldout.numel() == 0 for c in none_held.clients)
    x, _ = none_held.test_windows(32)
    assert x.shape == (0, 32)


def test_shared_themes_deal_their_documents_disjointly() -> None:
    # 70 clients over 66 books: four books go to two clients each.
    themes = KJV.load()
    fed = make_federated_text("kjv", 70, 1, seed=2)
    holders: dict[str, list[TextClientData]] = {}
    for client in fed.clients:
        holders.setdefault(client.themes[0], []).append(client)
    shared = {t: cs for t, cs in holders.items() if len(cs) > 1}
    assert len(holders) == 66 and len(shared) == 4
    for theme, clients in shared.items():
        parts = [Counter(_documents(torch.cat([c.tokens, c.heldout]), "")) for c in clients]
        assert parts[0] + parts[1] == Counter(themes[theme])
        assert abs(sum(parts[0].values()) - sum(parts[1].values())) <= 1


def test_empty_client_is_a_clear_error() -> None:
    # pratchett holds two fortunes: with every theme on three clients, one gets none.
    with pytest.raises(ConfigError) as caught:
        make_federated_text("fortunes", 129, 1, seed=0, max_bytes_per_client=500)
    message = str(caught.value)
    assert "holds no text" in message
    assert "'pratchett': 2 documents for 3 clients" in message
    assert "use at most 43 clients" in message

    empty = torch.zeros(0, dtype=torch.uint8)
    client = TextClientData(client_id=4, themes=("art",), tokens=empty, heldout=empty)
    with pytest.raises(ConfigError, match=r"text client 4 .* holds no training text"):
        client.batches(2, torch.Generator(), block_size=8)
    short = TextClientData(client_id=5, themes=("art",), tokens=torch.arange(8), heldout=empty)
    with pytest.raises(ConfigError, match="8 training tokens, fewer than block_size \\+ 1 = 9"):
        short.batches(2, torch.Generator(), block_size=8)
    assert next(short.batches(2, torch.Generator(), block_size=7))[0].shape == (2, 7)


def test_batches_are_windows_of_the_clients_text_reproducible_from_the_seed() -> None:
    # Prepare
    client = make_federated_text("fortunes", 4, 1, seed=3, max_bytes_per_client=CAP).clients[1]
    windows = client.tokens.long().unfold(0, 65, 1)  # every (block_size + 1)-window

    # Execute
    stream = client.batches(16, torch.Generator().manual_seed(7), block_size=64)
    batches = [next(stream) for _ in range(3)]
    replay = client.batches(16, torch.Generator().manual_seed(7), block_size=64)
    other = client.batches(16, torch.Generator().manual_seed(8), block_size=64)

    # Assert
    for x, y in batches:
        assert x.shape == y.shape == (16, 64)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        rows = torch.cat([x, y[:, -1:]], dim=1)
        assert bool((rows[:, None, :] == windows[None]).all(-1).any(-1).all())
    for x, y in batches:
        x2, y2 = next(replay)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(batches[0][0], next(other)[0])


def test_heldout_windows_score_each_heldout_token_once() -> None:
    fed = make_federated_text("fortunes", 3, 2, seed=4, max_bytes_per_client=CAP)
    total = 0
    for client in fed.clients:
        x, y = client.heldout_windows(block_size=100)
        count = (client.heldout.numel() - 1) // 100
        assert x.shape == y.shape == (count, 100) and x.dtype == torch.int64
        assert torch.equal(x.flatten(), client.heldout[: count * 100].long())
        assert torch.equal(y.flatten(), client.heldout[1 : count * 100 + 1].long())
        total += count
    x, y = fed.test_windows(block_size=100)
    assert x.shape == y.shape == (total, 100)
    assert torch.equal(x[:1], fed.clients[0].heldout_windows(100)[0][:1])


def test_to_json_summarises_themes_and_tokens() -> None:
    fed = make_federated_text("fortunes", 5, 3, seed=9, max_bytes_per_client=CAP)
    summary = json.loads(json.dumps(fed.to_json()))
    assert summary["source"] == "fortunes" and summary["sha256"] == FORTUNES.sha256
    assert summary["tokenizer"] == "bytes" and summary["vocab_size"] == 256
    assert summary["sizes"] == [c.num_examples for c in fed.clients]
    assert [c["themes"] for c in summary["clients"]] == [list(c.themes) for c in fed.clients]
    assert [c["heldout_tokens"] for c in summary["clients"]] == [
        c.heldout.numel() for c in fed.clients
    ]
    assert len(summary["unassigned_themes"]) == 43 - 15
    assert isinstance(fed, FederatedText) and fed.vocab_size == 256


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heldout_fraction": 1.0}, "heldout_fraction is 1.0"),
        ({"num_clients": 0}, "num_clients must be an integer >= 1"),
        ({"themes_per_client": 0}, "themes_per_client must be an integer >= 1"),
        ({"max_bytes_per_client": 0}, "max_bytes_per_client must be an integer >= 1"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float], match: str) -> None:
    settings: dict = {"num_clients": 2, "themes_per_client": 1, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=match):
        make_federated_text("fortunes", **settings)


def test_heldout_is_the_tail_of_the_seeded_shuffle() -> None:
    # Prepare: one book per client and no cap, so client i's documents are its book's verses.
    themes = KJV.load()
    fed = make_federated_text("kjv", 3, 1, seed=21)
    for client in fed.clients:
        verses = themes[client.themes[0]]
        order = numpy_rng(21, "text-heldout", client.client_id).permutation(len(verses))
        held = round(0.1 * len(verses))

        # Execute: the documented rule, written out.
        heldout = [verses[i] for i in sorted(order[len(verses) - held :])]
        train = [verses[i] for i in sorted(order[: len(verses) - held])]

        # Assert
        assert ByteTokenizer().decode(client.heldout) == "".join(heldout)
        assert ByteTokenizer().decode(client.tokens) == "".join(train)


def test_client_of_one_document_has_no_heldout_text() -> None:
    themes = PYTHON_DOCS.load()
    fed = make_federated_text("python-docs", 15, 1, seed=0, max_bytes_per_client=CAP)
    single = [c for c in fed.clients if len(themes[c.themes[0]]) == 1]
    assert {c.themes[0] for c in single} == {"distributing", "includes", "install", "installing"}
    for client in single:
        assert client.num_documents == 1 and client.num_heldout_documents == 0
        assert client.heldout_windows(16)[0].shape == (0, 16)
        assert client.num_examples > 0
