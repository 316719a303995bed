"""Fixtures for the data tests: the real data folder and an HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fedgen.data.sources import get_source

# ../shared/data from the project root; FEDGEN_TEST_DATA_DIR points elsewhere.
SHARED_DATA = Path(
    os.environ.get("FEDGEN_TEST_DATA_DIR", Path(__file__).resolve().parents[4] / "shared" / "data")
)


def _require_source(name: str) -> Path:
    status = get_source(name).status(SHARED_DATA)
    if not status.present or status.found_at is None:
        pytest.skip(
            f"{name} is not present (searched {status.searched}); provide it with: {status.provide}"
        )
    return status.found_at


@pytest.fixture(scope="session")
def require_source() -> Callable[[str], Path]:
    """``require_source(name)`` skips the test, saying how to provide the data, if ``name``
    is absent from the test data folder; else it returns the folder holding it."""
    return _require_source


@pytest.fixture(autouse=True)
def _no_user_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own FEDGEN_DATA_DIR must not change what the tests see.
    monkeypatch.delenv("FEDGEN_DATA_DIR", raising=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real test data (mnist/, kmnist/), the tests' data_dir."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def fashion_labels() -> np.ndarray:
    """The 60,000 real Fashion-MNIST training labels."""
    _require_source("fashion-mnist")
    return get_source("fashion-mnist").load("train", SHARED_DATA).labels.numpy()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve_dir() -> Iterator[Callable[[Path], str]]:
    """``serve_dir(folder)`` starts a real HTTP server for ``folder`` and returns its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
