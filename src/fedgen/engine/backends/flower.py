"""Flower backend: the round's clients run on Flower SuperNodes, reached through a Grid.

fedgen's own loop (``Federation``) runs inside a Flower ServerApp
(``fedgen.deploy.server_app``) and this backend carries each round's jobs and
replies over Flower's ``Grid``: ``push_messages`` to the SuperNode holding each
client, then ``pull_messages`` until every reply is in, a client's time is up, or
its node is gone. Each message holds one ``fedgen.wire`` message
(``flower_records``), the same bytes the process pool sends, so a result's
``bytes_down`` and ``bytes_up`` are the same figures in simulation and deployment, but
for one field: where a simulated job carries the client's noise key (64 hex digits),
a deployed one says ``own`` (61 header bytes fewer, 56 or 64 once the header is
padded to 8 bytes), since the node made its key itself.

Before the first round the backend says *hello* to every online node: it sends the
recipe (as JSON) and the run id; each node answers with the client id its node
config names, its example count, its fedgen version, and the public half of the
signing key it made for this run (``RunAudit.enrol``). A node that cannot read the
recipe, names no client, a client the partition does not have, or one another node
already holds, is refused with its own words before any round runs.

A client's private state (personal layers, adapters) stays on its SuperNode, in its
``state-dir`` (else in the run's Flower ``Context``); the server never sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.base import Backend, LocalWork
from fedgen.engine.backends.flower_records import pack, unpack
from fedgen.engine.backends.local_training import job_message, result_from_reply
from fedgen.errors import ConfigError, FedgenError
from fedgen.ledger import LedgerError, public_key_from_hex
from fedgen.registry import BACKENDS
from fedgen.types import ClientInstruction, ClientResult, RoundPlan, StateDict
from fedgen.wire import Message, WireError, decode, encode


class KeyEnrolment(Protocol):
    """What the hello needs of the run's keys (``fedgen.engine.audit.RunAudit``; named by
    shape, since the audit module imports this package)."""

    run_id: str
    client_public: dict[int, str]
    restored: bool

    def enrol(self, client_id: int, public_hex: str) -> None: ...

    def made_by_server(self, client_id: int) -> bool: ...


log = logging.getLogger(__name__)

#: Flower message types: the hello is a query, a round's job is a train message, and
#: a stage after training (secure aggregation's phases) queries the node again.
HELLO, TRAIN, STAGE = "query", "train", "query"
#: Flower's error codes (``flwr.common.constant.ErrorCode``) for a message or reply that
#: expired (MESSAGE_UNAVAILABLE 3, REPLY_MESSAGE_UNAVAILABLE 4) and a node that went
#: offline (NODE_UNAVAILABLE 5).
UNAVAILABLE = frozenset({3, 4, 5})


class DeploymentError(FedgenError):
    """The federation across SuperNodes cannot start (a node refused, none connected)."""


@dataclass(frozen=True)
class _Reply:
    """One message's answer: the decoded reply and its length, or why there is none."""

    message: Message | None
    nbytes: int = 0
    error: str | None = None
    #: True when no answer came (in time, or the node is gone), not a refusal.
    timed_out: bool = False
    #: The reply as it came off the wire.
    data: bytes = b""


def _exact(value: Any, kind: type, name: str) -> Any:
    """``value`` if it is exactly of ``kind`` (an int, not a bool, "3" or 3.9); else
    ``TypeError`` naming the field."""
    if type(value) is not kind:
        article = "an" if kind is int else "a"
        raise TypeError(f"{name} must be {article} {kind.__name__}, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class NodeHello:
    """What one SuperNode said of itself."""

    node_id: int
    client_id: int
    num_examples: int
    public_key: str
    fedgen_version: str


@BACKENDS.register("flower")
class FlowerBackend(Backend):
    """Runs each round's clients on Flower SuperNodes through the ServerApp's ``Grid``."""

    class Params(BaseModel):
        """The recipe's ``backend.params`` of ``flower``."""

        model_config = ConfigDict(extra="forbid")

        #: Seconds between pulls for replies (Flower's own send_and_receive waits 3 s).
        poll_interval: float = Field(0.1, gt=0)
        #: Seconds a round waits for a client's reply after sending its job; past it the
        #: client counts as failed. None: wait for every reply.
        client_timeout: float | None = Field(600.0, gt=0)
        #: Seconds to wait for the SuperNodes to connect before the first round.
        nodes_timeout: float = Field(300.0, gt=0)

    def __init__(
        self,
        poll_interval: float = 0.1,
        client_timeout: float | None = 600.0,
        nodes_timeout: float = 300.0,
    ) -> None:
        self.poll_interval = poll_interval
        self.client_timeout = client_timeout
        self.nodes_timeout = nodes_timeout
        self._grid: Any = None
        #: The node that holds each client, from the hello.
        self.nodes: dict[int, NodeHello] = {}
        #: Jobs in flight by Flower message id: (client, job bytes, when sent); and
        #: results that arrived and were not yet read.
        self._pending: dict[str, tuple[int, int, float]] = {}
        self._ready: list[ClientResult] = []

    def attach(self, grid: Any) -> None:
        """Use ``grid`` (the ServerApp's ``flwr.serverapp.Grid``) for every message."""
        self._grid = grid

    # -- hello -----------------------------------------------------------------

    def hello(
        self,
        recipe: str,
        client_ids: list[int],
        audit: KeyEnrolment | None,
        run_id: str | None = None,
    ) -> None:
        """Meet the SuperNodes: learn which client each holds, enrol their keys.

        ``run_id`` names the run to the nodes when it keeps no ledger (whose run id is
        used otherwise); it must survive a resume (``Federation.deployment_run_id``).

        Raises:
            DeploymentError: no node connected in time, or a node refused the recipe,
                named no client or an unknown one, or one another node holds.
        """
        grid = self._require_grid()
        deadline = time.monotonic() + self.nodes_timeout
        while len(nodes := sorted(grid.get_node_ids())) < len(client_ids):
            if time.monotonic() > deadline:
                if not nodes:
                    raise DeploymentError(
                        f"no SuperNode connected within {self.nodes_timeout:g} s; start them "
                        "with fedgen deploy up (or flower-supernode --superlink ...)"
                    )
                log.warning(
                    "%d of %d SuperNodes connected after %g s; going on with those",
                    len(nodes),
                    len(client_ids),
                    self.nodes_timeout,
                )
                break
            time.sleep(min(1.0, self.poll_interval * 10))
        from flwr.app import Message as FlowerMessage

        from fedgen.version import __version__

        meta: dict[str, object] = {"recipe": recipe, "fedgen": __version__}
        meta["ledger"] = audit is not None
        # What each node files its keys and private state under, stable across a resume.
        name = audit.run_id if audit is not None else run_id
        if name is not None:
            meta["run_id"] = name
        payload = encode(Message({}, meta))
        messages = [
            FlowerMessage(pack(payload), dst_node_id=node, message_type=HELLO) for node in nodes
        ]
        # Each node starts a ClientApp process that builds the recipe: give it a round's time.
        replies = self._exchange(messages, self.client_timeout)
        problems: list[str] = []
        holders: dict[int, NodeHello] = {}
        for node, reply in zip(nodes, replies, strict=True):
            if reply.message is None and reply.timed_out:
                # Silent, not refusing: a node listed online that died since. Its client
                # fails the rounds it is sampled for, as an unreachable client would.
                log.warning("SuperNode %d did not answer the hello: %s", node, reply.error)
                continue
            if reply.message is None:
                problems.append(f"SuperNode {node}: {reply.error}")
                continue
            said = reply.message.meta
            if "error" in said:
                problems.append(f"SuperNode {node}: {said['error']}")
                continue
            try:
                hello = NodeHello(
                    node,
                    _exact(said["client_id"], int, "client_id"),
                    _exact(said["num_examples"], int, "num_examples"),
                    _exact(said["public_key"], str, "public_key"),
                    _exact(said["fedgen"], str, "fedgen"),
                )
                if audit is not None:
                    public_key_from_hex(hello.public_key)  # enrolled later: refused here
            except (KeyError, TypeError, ValueError, LedgerError) as exc:
                problems.append(f"SuperNode {node}: a malformed hello ({exc})")
                continue
            if hello.client_id not in client_ids:
                problems.append(
                    f"SuperNode {node}: names client {hello.client_id}, which the recipe's "
                    f"partition does not have (clients {client_ids[0]}..{client_ids[-1]})"
                )
            elif hello.client_id in holders:
                other = holders[hello.client_id].node_id
                problems.append(
                    f"SuperNodes {other} and {node} both name client {hello.client_id}; give "
                    "each node its own client-id in --node-config"
                )
            else:
                holders[hello.client_id] = hello
        if problems:
            raise DeploymentError("the SuperNodes refused the run:\n  " + "\n  ".join(problems))
        missing = sorted(set(client_ids) - set(holders))
        if missing:
            log.warning("no SuperNode holds clients %s: they fail when sampled", missing)
        if audit is not None:
            for hello in list(holders.values()):
                enrolled = audit.client_public.get(hello.client_id)
                if audit.restored and audit.made_by_server(hello.client_id):
                    # No node held the client when the run enrolled it: the ledger has a
                    # key the server made, under which this node's updates cannot verify.
                    log.warning(
                        "SuperNode %d holds client %d, which joined after the run enrolled "
                        "its clients: it sits out this run (its updates could not be "
                        "verified in the ledger); start a new run to include it",
                        hello.node_id,
                        hello.client_id,
                    )
                    del holders[hello.client_id]
                    continue
                if audit.restored and enrolled != hello.public_key:
                    raise DeploymentError(
                        f"client {hello.client_id}'s signing key changed since it enrolled in "
                        "this run (its node lost its state-dir); the ledger could not verify "
                        "its updates: start a new run"
                    )
                audit.enrol(hello.client_id, hello.public_key)
        self.nodes = holders

    # -- a round ---------------------------------------------------------------

    def run(
        self,
        plan: RoundPlan,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> Iterator[ClientResult]:
        self._require_grid()
        results: dict[int, ClientResult] = {}
        sent: list[tuple[int, Any, int]] = []  # (plan index, flower message, job bytes)
        for index, ins in enumerate(plan.instructions):
            message, down, failed = self._job(ins, work, len(clients))
            if failed is not None:
                results[index] = failed
            else:
                sent.append((index, message, down))
        replies = self._exchange([m for _, m, _ in sent], self.client_timeout)
        for (index, _, down), reply in zip(sent, replies, strict=True):
            results[index] = self._result(plan.instructions[index].client_id, down, reply)
        for index in range(len(plan.instructions)):
            yield results[index]

    # -- jobs in flight (wall-clock FedBuff) -----------------------------------

    supports_async = True

    def submit(
        self,
        ins: ClientInstruction,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> None:
        """Push one client's job to its SuperNode now; its reply is read by ``arrivals``."""
        grid = self._require_grid()
        message, down, failed = self._job(ins, work, len(clients))
        if failed is not None:
            self._ready.append(failed)
            return
        (mid,) = grid.push_messages([message])
        self._pending[mid] = (ins.client_id, down, time.monotonic())

    def arrivals(self, count: int) -> list[ClientResult]:
        """The next ``count`` replies to arrive (fewer if fewer jobs are in flight)."""
        grid = self._require_grid()
        while len(self._ready) < count and self._pending:
            for reply in grid.pull_messages(list(self._pending)):
                mid = reply.metadata.reply_to_message_id
                if mid in self._pending:
                    cid, down, _ = self._pending.pop(mid)
                    self._ready.append(self._result(cid, down, _read(reply)))
            now = time.monotonic()
            for mid, (cid, down, sent) in list(self._pending.items()):
                if self.client_timeout is not None and now - sent > self.client_timeout:
                    del self._pending[mid]
                    late = _Reply(None, error=f"no reply within {self.client_timeout:g} s")
                    self._ready.append(self._result(cid, down, late))
            if len(self._ready) < count and self._pending:
                time.sleep(self.poll_interval)
        out, self._ready = self._ready[:count], self._ready[count:]
        return out

    # -- one client's job and result ---------------------------------------------

    def _job(
        self, ins: ClientInstruction, work: LocalWork, num_clients: int
    ) -> tuple[Any, int, ClientResult | None]:
        """The Flower message of a client's job and its bytes, or the failure instead."""
        from flwr.app import Message as FlowerMessage

        node = self.nodes.get(ins.client_id)
        if node is None:
            return None, 0, ClientResult(ins.client_id, 0, failure="no SuperNode holds it")
        try:
            # The SuperNode draws DP-SGD's noise with a key it made itself, which this
            # server never holds (it could derive the simulation's, client_noise_key).
            job = encode(job_message(ins, work, num_clients, key_at_client=True))
        except WireError as exc:
            failure = f"the client's job cannot be encoded: {exc}"
            return None, 0, ClientResult(ins.client_id, 0, failure=failure)
        message = FlowerMessage(
            pack(job), dst_node_id=node.node_id, message_type=TRAIN, group_id=str(work.round)
        )
        return message, len(job), None

    def _result(self, cid: int, down: int, reply: _Reply) -> ClientResult:
        """The result a client's reply carries (a failure value when it carries none)."""
        if reply.message is None:
            result = ClientResult(cid, 0, failure=str(reply.error), bytes_down=down)
        elif "error" in reply.message.meta:
            # The node refused the job itself (no recipe, a noise key it will not use):
            # its own words, not "malformed reply".
            failure = f"the node refused the job: {str(reply.message.meta['error'])[:300]}"
            result = ClientResult(cid, 0, failure=failure, bytes_down=down)
        else:
            try:
                result = result_from_reply(reply.message)
            except WireError as exc:
                result = ClientResult(cid, 0, failure=f"malformed reply: {exc}")
            if result.client_id != cid:
                # The node answers for the client its job went to, never for another
                # (whose update it would replace, or whose weight it would take).
                failure = f"the reply names client {result.client_id}, the job went to {cid}"
                result = ClientResult(cid, 0, failure=failure)
        # What came up the wire counts, a refusal's or a malformed reply's too.
        result.bytes_down, result.bytes_up = down, reply.nbytes
        if result.failure is not None:
            log.warning("client %d failed: %s", cid, result.failure)
        return result

    # -- a stage after training (secure aggregation) ----------------------------

    def exchange(self, round: int, requests: dict[int, bytes]) -> dict[int, bytes | None]:
        """Send each client's encoded request to its SuperNode; return the replies.

        The ClientApp answers from what it holds in the run's ``Context`` (its
        update and protocol keys); a node that does not answer in time is None.
        """
        from flwr.app import Message as FlowerMessage

        self._require_grid()
        sent: list[tuple[int, Any]] = []
        for cid, data in requests.items():
            node = self.nodes.get(cid)
            if node is not None:
                message = FlowerMessage(
                    pack(data), dst_node_id=node.node_id, message_type=STAGE, group_id=str(round)
                )
                sent.append((cid, message))
        replies = self._exchange([m for _, m in sent], self.client_timeout)
        out: dict[int, bytes | None] = dict.fromkeys(requests)
        for (cid, _), reply in zip(sent, replies, strict=True):
            if reply.message is None:
                log.warning("client %d did not answer in round %d: %s", cid, round, reply.error)
                continue
            out[cid] = reply.data
        return out

    def end_stage(self) -> None:
        """Nothing to forget here: each ClientApp forgets its own held state."""

    # -- messages --------------------------------------------------------------

    def _require_grid(self) -> Any:
        if self._grid is None:
            raise ConfigError(
                "backend flower runs inside a Flower ServerApp: start the run with "
                "`fedgen deploy run`, or use backend inprocess or process_pool to simulate"
            )
        return self._grid

    def _exchange(self, messages: list[Any], timeout: float | None) -> list[_Reply]:
        """Push ``messages`` and pull their replies (decoded), one ``_Reply`` per message."""
        grid = self._require_grid()
        if not messages:
            return []
        ids = list(grid.push_messages(messages))
        position = {mid: i for i, mid in enumerate(ids)}
        out = [_Reply(None, error="no reply", timed_out=True) for _ in ids]
        waiting = set(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting:
            for reply in grid.pull_messages(list(waiting)):
                mid = reply.metadata.reply_to_message_id
                if mid not in waiting:
                    continue
                waiting.discard(mid)
                out[position[mid]] = _read(reply)
            if waiting and deadline is not None and time.monotonic() > deadline:
                for mid in waiting:
                    out[position[mid]] = _Reply(
                        None, error=f"no reply within {timeout:g} s", timed_out=True
                    )
                break
            if waiting:
                time.sleep(self.poll_interval)
        return out


def _read(reply: Any) -> _Reply:
    """One Flower reply, decoded: its fedgen message, or why there is none."""
    if reply.has_error():
        # The SuperLink answers for a node that went offline (missed heartbeats) or a
        # message that expired: absent, not refusing.
        gone = reply.error.code in UNAVAILABLE
        return _Reply(None, error=f"the node failed: {reply.error.reason}", timed_out=gone)
    try:
        data = unpack(reply.content)
    except WireError as exc:
        return _Reply(None, error=f"malformed reply: {exc}")
    try:
        return _Reply(decode(data), len(data), data=data)
    except WireError as exc:
        return _Reply(None, len(data), error=f"malformed reply: {exc}")
