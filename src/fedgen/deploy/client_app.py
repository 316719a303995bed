"""fedgen's client side as a Flower ClientApp: one SuperNode is one client.

The SuperNode's ``--node-config`` names its client (``client-id=N``) and, where
it should keep what must outlive one message, a folder of its own
(``state-dir="/path"``, required for DP-SGD): the signing key and the DP noise key it
makes for each run. The noise key seeds the noise this client draws itself (DP-SGD's
noise and batches), bound to the whole job it receives (model, round, seed, config,
steps): the server never holds it, so sample-level DP protects the client's examples
from the server too, and a server that changes anything of a job gets fresh noise (a
simulation derives each client's key from the run's, ``client_noise_key``). A job that
hands the node a key is refused, and so is DP-SGD seeded from the root seed
(``noise_seed: root``) unless the node's operator accepts it (``root-noise=true`` in
the node config). The node keeps its own DP-SGD budget (``NodeBudget``: the recipe's
per run, and with ``max-epsilon=E`` the operator's over every run on its shard; such a
node trains with DP-SGD only). Under DP-SGD its replies carry no losses: they are
figures of its batches that no noise covers.
Flower starts a fresh ClientApp process for every message, so each message rebuilds the
client's parts from the recipe (``RecipeClientSide``), the one the server sent in
its hello, kept in the run's ``Context.state``; the client keeps its shard only.
Its private state (personal layers, adapters) never crosses the wire: the node
keeps a version per round (``PrivateStore``: in its ``state-dir``, so it outlives
a SuperNode restart, else in the ``Context``).

Three messages: the hello (a Flower *query*) checks that this fedgen reads the
recipe and that the client exists, and answers with the client id, its example
count, the fedgen version and the public half of its signing key; a round's job
(a Flower *train* message) is answered by ``answer_job``, the code a simulation
worker runs; a request of secure aggregation's stage (a *query* holding a
``secagg`` message) by ``answer_phase``, from the update and keys this node holds
in the ``Context`` since training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from fedgen.config import parse_config
from fedgen.deploy.node_budget import NodeBudget
from fedgen.deploy.node_files import check_run_id, locked, node_path, state_dir, write_owner_only
from fedgen.deploy.private_store import PrivateStore
from fedgen.engine.backends.base import LocalWork
from fedgen.engine.backends.flower import HELLO
from fedgen.engine.backends.flower_records import pack, unpack
from fedgen.engine.backends.local_training import (
    OWN_NOISE_KEY,
    answer_job,
    job_binding,
    job_digest,
    local_steps_for,
)
from fedgen.engine.backends.secagg_client import answer_phase
from fedgen.engine.backends.signing import ClientKeys
from fedgen.engine.ditto import ditto_settings
from fedgen.errors import FedgenError
from fedgen.ledger import (
    generate_key,
    private_key_from_hex,
    private_key_hex,
    public_key_hex,
)
from fedgen.privacy.noise_key import keyed_run_id, new_noise_key
from fedgen.transforms.secagg.codec import from_message, to_message
from fedgen.types import ClientInstruction
from fedgen.version import __version__
from fedgen.wire import Message, decode, encode

log = logging.getLogger(__name__)

#: Keys of the run's ``Context.state``: the recipe and run id, and what a secure round
#: holds between its messages (the update, the protocol's keys). The private state's
#: versions are kept by ``PrivateStore``.
STATE_CONFIG, STATE_HELD = "fedgen.client", "fedgen.held"


def answer(message: Any, context: Any) -> Any:
    """The ClientApp's handler for both message types (registered by the app's shim)."""
    from flwr.app import Message as FlowerMessage

    try:
        request = decode(unpack(message.content))
        client_id = node_client_id(context.node_config)
        if "secagg" in request.meta:
            reply = _stage(unpack(message.content), client_id, context)
        elif message.metadata.message_type == HELLO:
            reply = _hello(request, client_id, context)
        else:
            reply = _train(unpack(message.content), client_id, context)
    except (FedgenError, OSError, ValueError, KeyError) as exc:
        # In the node's words, to the server's log (a ClientBuildError, a missing data
        # set, a damaged key file, a full disk): not Flower's generic error for a raise.
        reply = _error(f"{type(exc).__name__}: {exc}")
    return FlowerMessage(pack(reply), reply_to=message)


def node_client_id(node_config: Any) -> int:
    """The client this SuperNode is, from ``--node-config "client-id=N"``."""
    value = node_config.get("client-id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"this SuperNode's node config has client-id={value!r}; start it with "
            "--node-config 'client-id=N' naming one client of the recipe's partition"
        )
    return value


def _hello(request: Message, client_id: int, context: Any) -> bytes:
    from flwr.app import ConfigRecord

    from fedgen.experiment import RecipeClientSide

    server_version = request.meta.get("fedgen")
    if server_version != __version__:
        return _error(
            f"this SuperNode runs fedgen {__version__}, the server {server_version}; "
            "install the same fedgen on both"
        )
    recipe = str(request.meta["recipe"])
    try:
        kit = RecipeClientSide.from_json(recipe).open()
        data = kit.data(client_id)
    except Exception as exc:  # the node's own words reach the server's error
        return _error(f"{type(exc).__name__}: {exc}")
    run_id = str(request.meta.get("run_id", ""))
    if run_id:
        check_run_id(run_id)
    # Made here, it refuses a DP-SGD run on a node without a state-dir.
    budget = (
        NodeBudget(context, _budget_run_id(run_id, recipe), client_id)
        if kit.sample_budget is not None or state_dir(context)
        else None
    )
    if kit.sample_budget is None and context.node_config.get("max-epsilon") is not None:
        return _error(
            "this node trains only with DP-SGD (its node config sets max-epsilon), and the "
            "recipe has no dpsgd section: its examples would leave in updates without noise"
        )
    if kit.sample_budget is None and budget is not None and budget.has_rounds():
        return _error(
            "this client trained rounds of the run with DP-SGD, and the recipe now has no "
            "dpsgd section: its examples would leave in updates without noise; refused"
        )
    key, noise_key = _own_keys(context, client_id, run_id)
    # Updates are signed only for a run that keeps a ledger (a hello without the flag
    # comes from a fedgen that sent a run id for ledgers alone).
    ledger = bool(run_id) and request.meta.get("ledger", True) is not False
    context.state[STATE_CONFIG] = ConfigRecord(
        {
            "recipe": recipe,
            "run_id": run_id,
            "key": key,
            "noise_key": noise_key,
            "ledger": ledger,
        }
    )
    return encode(
        Message(
            {},
            {
                "client_id": client_id,
                "num_examples": data.num_examples,
                "public_key": public_key_hex(private_key_from_hex(key)),
                "fedgen": __version__,
            },
        )
    )


def _train(job: bytes, client_id: int, context: Any) -> bytes:
    from fedgen.experiment import RecipeClientSide

    if STATE_CONFIG not in context.state:
        raise ValueError(
            "a job before the hello: this node has no recipe for the run (a SuperNode "
            "restarted mid-run forgets it; its client sits out the run until the ServerApp "
            "is resumed too, which says hello again: fedgen deploy run with the same --out)"
        )
    setup = context.state[STATE_CONFIG]
    kit = RecipeClientSide.from_json(str(setup["recipe"])).open()
    run_id = str(setup["run_id"])
    message = decode(job)
    meta = message.meta
    round = meta.get("round")
    if type(round) is not int or round < 0:
        raise ValueError(f"a job without a round number (round={round!r:.20})")
    _check_noise(meta.get("noise_key"), kit.task.privacy_engine is not None, context)
    admit = None
    sample = kit.sample_budget
    if sample is not None:
        budget = NodeBudget(context, _budget_run_id(run_id, str(setup["recipe"])), client_id)
        per_step = kit.task.private_batches_per_step()
        # The noise key's fingerprint (stable while the key is, revealing nothing of it).
        key_id = keyed_run_id(bytes.fromhex(str(setup["noise_key"])))
        # The current fingerprint first; a record written by an older fedgen names the
        # job under the recipe's legacy one (which hashed data.data_dir).
        recipe_ids = _recipe_fingerprints(str(setup["recipe"]))

        def admit(ins: ClientInstruction, work: LocalWork) -> None:
            # Recorded once the job is checked, before training: a crash mid-job still
            # counts the round.
            if ditto_settings(ins) is not None:
                raise ValueError(
                    "the job asks for Ditto's personal steps, which DP-SGD's accounting "
                    "does not count (a simulation refuses the pair); refused"
                )
            steps = local_steps_for(work, kit.data(client_id).num_examples) * per_step
            # What the noise is bound to; under root-seeded noise, the same job's name.
            bound = work.noise_binding or job_binding(job_digest(message), private)
            # The record also names the recipe's weight-shaping settings: a hello that
            # changed them (the clip bound, the learning rate, the data), then the same
            # job again, would draw the same noise over another update, and the two
            # answers' difference would carry none. Rounds and eval may change.
            record, *legacy = (
                hashlib.sha256(f"{bound}\n{recipe_id}".encode()).hexdigest()
                for recipe_id in recipe_ids
            )
            budget.admit(work.round, record, steps, sample, key_id, also=legacy)

    store = PrivateStore(context, run_id, client_id)
    private = store.load(before_round=round)
    keys = ClientKeys(run_id, {client_id: str(setup["key"])}) if setup["ledger"] else None
    held: dict[int, dict[str, Any]] = {}
    noise_key = bytes.fromhex(str(setup["noise_key"]))
    reply, kept = answer_job(
        job,
        kit.task,
        kit,
        private,
        keys,
        expected_client=client_id,
        held=held,
        own_noise_key=noise_key,
        admit=admit,
    )
    # A refused or failed job hands back the state it loaded (the same object): nothing
    # was trained, and a version filed under the round it named could push real ones out.
    if kept and kept is not private:
        store.save(round, kept)
    mine = held.get(client_id)
    root_seeded = meta.get("noise_key") is None
    if mine is not None and root_seeded and context.node_config.get("root-noise") is not True:
        # Root-seeded noise the server could regenerate: this node will not release its
        # update alone (``LoneRequest``), which would then be bare to the server; its
        # round counts it as failed instead.
        mine["noise_seed"] = None
    # A secure round's update stays on this node until the stage's requests come.
    _keep_held(context, mine)
    return reply


def _check_noise(noise_key: object, draws_noise: bool, context: Any) -> None:
    """Refuse a job whose DP noise the server could know: one that hands this node a
    noise key, or, when the node draws noise itself (DP-SGD), seeds it from the root
    seed (``noise_seed: root``) unless the node's operator accepted that. (A secure
    round's lone release is refused alone in that case: see ``_train``.)"""
    if noise_key not in (OWN_NOISE_KEY, None):
        raise ValueError(
            "the job carries a DP noise key: this node draws its noise with a key of its "
            "own, which no server may choose (is the server a fedgen of this version?)"
        )
    if noise_key is None and draws_noise and context.node_config.get("root-noise") is not True:
        raise ValueError(
            "the run seeds DP-SGD's noise from the root seed (noise_seed: root), which the "
            "server can regenerate, so this node's examples would have no privacy from it; "
            "start the node with --node-config 'root-noise=true' to accept that"
        )


def _recipe_fingerprints(recipe: str) -> tuple[str, ...]:
    """The fingerprints (``ExperimentConfig.fingerprints``, the current one first) of a
    recipe received as JSON: what shapes the weights, not how many rounds run or what
    is evaluated. A recipe with both ``dpsgd.epsilon`` and ``noise_multiplier`` may be a
    resumed run's, whose server pinned the sigma it started with
    (``RecipeClientSide.keep_dpsgd_noise``): the recipe it started from, without the
    pin, names the same jobs (the records' sigma still guards the noise)."""
    cfg = parse_config(json.loads(recipe))
    names = list(cfg.fingerprints())
    dpsgd = cfg.dpsgd
    if dpsgd is not None and dpsgd.epsilon is not None and dpsgd.noise_multiplier is not None:
        unpinned = dpsgd.model_copy(update={"noise_multiplier": None})
        names += cfg.model_copy(update={"dpsgd": unpinned}).fingerprints()
    return tuple(names)


def _budget_run_id(run_id: str, recipe: str) -> str:
    """The name of a run's DP-SGD record: its id, or for a run without one (root-seeded
    noise and no ledger) its recipe's digest."""
    return run_id or "recipe-" + hashlib.sha256(recipe.encode()).hexdigest()[:32]


def _stage(request: bytes, client_id: int, context: Any) -> bytes:
    """One request of a stage after training (secure aggregation), from what is held."""
    held = None
    if STATE_HELD in context.state:
        held = from_message(decode(context.state[STATE_HELD]["wire"].numpy().tobytes()))
    reply, kept = answer_phase(request, held, client_id)
    _keep_held(context, kept)
    return reply


def _keep_held(context: Any, held: dict[str, Any] | None) -> None:
    if held is None:
        if STATE_HELD in context.state:
            del context.state[STATE_HELD]
    else:
        context.state[STATE_HELD] = _record(encode(to_message(held)))


def _record(data: bytes) -> Any:
    """``data`` as an ArrayRecord, the form a ``Context`` keeps between messages."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(array_dict={"wire": Array(np.frombuffer(data, dtype=np.uint8).copy())})


def _own_keys(context: Any, client_id: int, run_id: str) -> tuple[str, str]:
    """This client's signing key and DP noise key for ``run_id`` (hex), made here and
    never sent.

    Kept in the node's ``state-dir`` when it has one (owner-readable only), so that a
    ServerApp restarted on the same run meets the signing key it enrolled and the client
    draws the same noise as before; else in the run's Context only.
    """
    name = node_path(context, "keys", run_id, client_id)
    if name is None:
        return private_key_hex(generate_key()), new_noise_key().hex()
    path = name.with_name(name.name + ".json")
    # Two hellos at once must not each make a key and keep different ones.
    with locked(path.with_name(f"client-{client_id}.lock")):
        try:
            kept = json.loads(path.read_text()) if path.is_file() else {}
            if not isinstance(kept, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise ValueError(
                f"this node's key file {path} is unreadable ({exc}); restore it from a "
                "backup, or move it away to make new keys (a server resuming this run then "
                "refuses the new signing key, and the DP-SGD record its noise key: start a "
                "new run)"
            ) from exc
        # A file from a fedgen before noise keys holds the signing key alone: keep it.
        keys = {
            "key": kept.get("key") or private_key_hex(generate_key()),
            "noise_key": kept.get("noise_key") or new_noise_key().hex(),
        }
        if keys != kept:
            # Whole or not at all: the signing key the server enrolled must survive a
            # crash while the file gains its noise key.
            write_owner_only(path, json.dumps(keys).encode())
    return keys["key"], keys["noise_key"]


def _error(text: str) -> bytes:
    # Said on both sides: in this node's log, and to the server (a refused hello stops
    # the run; a refused job is that client's failure, in these words).
    log.error("refusing the server's request: %s", text)
    return encode(Message({}, {"error": text}))
