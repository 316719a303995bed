"""A deployed client's private state (personal layers, adapters, residuals), by round.

In a simulation the server's checkpoint holds every client's private state, so a
resumed run continues each one from the checkpointed round. Deployed, the state
never leaves its node; the node keeps one version per round it trained, and a job
for round ``r`` starts from the newest version of a round before ``r``. A
ServerApp resumed from an earlier checkpoint thus meets the private state of that
point, not one from rounds it threw away, and a restarted SuperNode finds its
versions in its ``state-dir``. Without a ``state-dir`` (or a run id) they live in
the run's Flower ``Context`` and end with the SuperNode process.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from fedgen.deploy.node_files import node_path, write_owner_only
from fedgen.types import StateDict
from fedgen.wire import Message, WireError, decode, encode

log = logging.getLogger(__name__)

#: Versions kept per client: a resume from further back starts from the initial state.
KEEP = 8
#: The ``Context.state`` record of versions when the node has no state-dir.
STATE_VERSIONS = "fedgen.private"
_FILE = re.compile(r"round-(\d+)\.wire")


class PrivateStore:
    """One client's private-state versions on its node (see module docstring)."""

    def __init__(self, context: Any, run_id: str, client_id: int) -> None:
        self.context = context
        self.folder = node_path(context, "private", run_id, client_id)

    def load(self, before_round: int) -> StateDict | None:
        """The newest version trained in a round before ``before_round``, or None."""
        versions = self._versions()
        earlier = [r for r in versions if r < before_round]
        if not earlier:
            if versions:
                log.warning(
                    "no private state from before round %d is kept (oldest: round %d); "
                    "this client starts from its initial private state",
                    before_round,
                    min(versions),
                )
            return None
        try:
            return decode(self._read(max(earlier))).arrays
        except (OSError, WireError) as exc:
            log.warning(
                "private state of round %d unreadable (%s); starting afresh", max(earlier), exc
            )
            return None

    def save(self, round: int, state: StateDict) -> None:
        """Keep ``state`` as trained in ``round``; drop the versions of later rounds (a
        timeline the server threw away when it resumed from further back) and all but
        the newest ``KEEP`` of the rest, never the one just written."""
        data = encode(Message(state))
        if self.folder is None:
            from flwr.app import Array, ArrayRecord

            held = self.context.state.get(STATE_VERSIONS)
            arrays = {} if held is None else dict(held.items())
            arrays[f"round-{round}"] = Array(np.frombuffer(data, dtype=np.uint8).copy())
            for old in _dropped([int(n.split("-")[1]) for n in arrays], round):
                del arrays[f"round-{old}"]
            self.context.state[STATE_VERSIONS] = ArrayRecord(array_dict=arrays)
            return
        # A crash mid-write leaves the previous versions whole.
        write_owner_only(self.folder / f"round-{round}.wire", data)
        for old in _dropped(self._versions(), round):
            (self.folder / f"round-{old}.wire").unlink(missing_ok=True)

    def _versions(self) -> list[int]:
        if self.folder is None:
            held = self.context.state.get(STATE_VERSIONS)
            return [] if held is None else [int(n.split("-")[1]) for n in held]
        if not self.folder.is_dir():
            return []
        return [int(m.group(1)) for p in self.folder.iterdir() if (m := _FILE.fullmatch(p.name))]

    def _read(self, round: int) -> bytes:
        if self.folder is None:
            data: bytes = self.context.state[STATE_VERSIONS][f"round-{round}"].numpy().tobytes()
            return data
        return (self.folder / f"round-{round}.wire").read_bytes()


def _dropped(versions: list[int], saved: int) -> list[int]:
    """The versions to delete once round ``saved``'s is written: every later round's,
    and the oldest beyond ``KEEP`` of the rest."""
    later = [r for r in versions if r > saved]
    kept = sorted(r for r in versions if r <= saved)
    return later + kept[:-KEEP]
