"""fedgen's ClientApp refuses bad requests with a reply that says why (no network here:
the handler is called with real Flower messages and a real Context)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgen.deploy.client_app import STATE_CONFIG, answer
from fedgen.engine.backends.flower import HELLO, TRAIN
from fedgen.engine.backends.flower_records import pack, unpack
from fedgen.experiment import RecipeClientSide
from fedgen.version import __version__
from fedgen.wire import Message, WireError, decode, encode

flwr_app = pytest.importorskip("flwr.app")


@pytest.fixture(autouse=True)
def _inside_a_flower_process(monkeypatch):
    # Flower stamps every new message with the identity of the process it runs in (set
    # by a ServerApp or ClientApp process at start); here the test is that process.
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 2), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _context(node_config: dict[str, object]):
    return flwr_app.Context(
        run_id=1, node_id=2, node_config=node_config, state=flwr_app.RecordDict(), run_config={}
    )


def _ask(kind: str, payload: bytes, context) -> dict[str, object]:
    request = flwr_app.Message(pack(payload), dst_node_id=2, message_type=kind)
    return decode(unpack(answer(request, context).content)).meta


def _hello(recipe: str, version: str = __version__, **meta: object) -> bytes:
    said = {"recipe": recipe, "fedgen": version, "run_id": "ab" * 16, **meta}
    return encode(Message({}, said))


@pytest.fixture(scope="module")
def recipe(mnist_dir) -> str:
    from tiny_federation import tiny_config

    return RecipeClientSide(tiny_config(mnist_dir)).recipe


def test_a_hello_is_answered_with_the_client_and_a_key_of_its_own(recipe, tmp_path):
    context = _context({"client-id": 1, "state-dir": str(tmp_path)})
    said = _ask(HELLO, _hello(recipe), context)
    assert said["client_id"] == 1 and said["num_examples"] > 0 and said["fedgen"] == __version__
    assert len(str(said["public_key"])) == 64
    # The key is the node's own, kept in its state-dir: a second hello meets the same one.
    again = _ask(HELLO, _hello(recipe), _context({"client-id": 1, "state-dir": str(tmp_path)}))
    assert again["public_key"] == said["public_key"]
    assert STATE_CONFIG in context.state


def test_a_corrupted_key_file_is_refused_with_what_to_do(recipe, tmp_path):
    _ask(HELLO, _hello(recipe), _context({"client-id": 1, "state-dir": str(tmp_path)}))
    (key_file,) = (tmp_path / "keys").glob("*.json")
    key_file.write_text('{"key": "ab')  # cut short, as by a full disk
    said = _ask(HELLO, _hello(recipe), _context({"client-id": 1, "state-dir": str(tmp_path)}))
    assert f"this node's key file {key_file} is unreadable" in str(said["error"])
    assert "restore it from a backup" in str(said["error"])
    assert key_file.read_text() == '{"key": "ab'  # nothing overwritten


def test_an_old_key_file_keeps_its_signing_key_and_gains_a_noise_key(recipe, tmp_path):
    said = _ask(HELLO, _hello(recipe), _context({"client-id": 1, "state-dir": str(tmp_path)}))
    (key_file,) = (tmp_path / "keys").glob("*.json")
    signing = json.loads(key_file.read_text())["key"]
    key_file.write_text(json.dumps({"key": signing}))  # as a fedgen before noise keys wrote it
    again = _ask(HELLO, _hello(recipe), _context({"client-id": 1, "state-dir": str(tmp_path)}))
    kept = json.loads(key_file.read_text())
    assert again["public_key"] == said["public_key"] and kept["key"] == signing
    # No partial file is left beside it (the lock file that serialises hellos stays).
    left = [p for p in key_file.parent.iterdir() if p.suffix != ".lock"]
    assert len(kept["noise_key"]) == 64 and left == [key_file]


def test_a_run_without_a_ledger_is_still_filed_under_its_id_and_goes_unsigned(recipe, tmp_path):
    context = _context({"client-id": 1, "state-dir": str(tmp_path)})
    _ask(HELLO, _hello(recipe, ledger=False, run_id="cd" * 16), context)
    # Its keys outlive the ServerApp (a resume meets the same noise key); no signatures.
    kept = [f.name for f in (tmp_path / "keys").iterdir() if f.suffix == ".json"]
    assert kept == [f"run-{'cd' * 16}-client-1.json"]
    assert context.state[STATE_CONFIG]["ledger"] is False


def test_another_fedgen_version_is_refused(recipe):
    said = _ask(HELLO, _hello(recipe, "0.0.1"), _context({"client-id": 0}))
    assert "this SuperNode runs fedgen" in str(said["error"])
    assert "install the same fedgen on both" in str(said["error"])


def test_a_recipe_this_fedgen_cannot_read_is_refused(recipe):
    unreadable = recipe.replace('"rounds": 3', '"rounds": "many"')
    said = _ask(HELLO, _hello(unreadable), _context({"client-id": 0}))
    assert "cannot build the recipe's client" in str(said["error"])
    assert "federation.rounds" in str(said["error"])


def test_a_node_whose_data_set_is_missing_says_so_in_its_own_words(recipe, monkeypatch):
    # A fedgen error outside the wire's (here: the node's copy of the data set is gone)
    # reaches the server as the node's reply, not as Flower's generic error for a raise.
    from fedgen.errors import DataMissingError

    def missing(self):
        raise DataMissingError("mnist is not in /srv/data; set FEDGEN_DATA_DIR")

    context = _context({"client-id": 0})
    assert "error" not in _ask(HELLO, _hello(recipe), context)
    # The data went missing after the hello, before the first job.
    monkeypatch.setattr(RecipeClientSide, "open", missing)
    said = _ask(TRAIN, encode(Message({}, {"round": 0})), context)
    assert said["error"] == "DataMissingError: mnist is not in /srv/data; set FEDGEN_DATA_DIR"


def test_a_client_the_partition_lacks_is_refused(recipe):
    said = _ask(HELLO, _hello(recipe), _context({"client-id": 7}))
    assert "client 7 does not exist: the recipe's partition has clients 0..3" in str(said["error"])


def test_a_node_config_without_a_client_is_refused(recipe):
    said = _ask(HELLO, _hello(recipe), _context({"partition-id": 0}))
    assert "--node-config 'client-id=N'" in str(said["error"])


def test_a_job_before_the_hello_is_refused():
    said = _ask(TRAIN, encode(Message({}, {"client_id": 0})), _context({"client-id": 0}))
    assert "a job before the hello" in str(said["error"])


def test_a_message_without_fedgens_record_is_refused():
    request = flwr_app.Message(
        flwr_app.RecordDict({"other": flwr_app.ConfigRecord({"x": 1})}),
        dst_node_id=2,
        message_type=HELLO,
    )
    said = decode(unpack(answer(request, _context({"client-id": 0})).content)).meta
    assert "without fedgen's record" in str(said["error"])


def test_a_record_that_is_not_a_wire_message_is_refused():
    said = _ask(HELLO, b"FGWIRE-not-really", _context({"client-id": 0}))
    assert "WireError" in str(said["error"])


def test_unpack_refuses_an_array_that_is_not_bytes():
    content = flwr_app.RecordDict(
        {"fedgen": flwr_app.ArrayRecord(array_dict={"wire": flwr_app.Array(np.zeros(3))})}
    )
    with pytest.raises(WireError, match="not bytes"):
        unpack(content)


def test_backend_flower_outside_a_serverapp_says_how_to_deploy(mnist_dir):
    from tiny_federation import tiny_config

    from fedgen.errors import ConfigError
    from fedgen.experiment import build_experiment

    fed = build_experiment(tiny_config(mnist_dir, **{"backend.name": "flower"})).federation
    with pytest.raises(ConfigError, match="fedgen deploy run"):
        fed.run_round(0)


def _dpsgd_config(mnist_dir: Path, **extra: object):
    from tiny_federation import TINY_DPSGD, tiny_config

    return tiny_config(
        mnist_dir,
        **{
            **TINY_DPSGD,
            "federation.local_steps": 1,
            "ledger": "false",
            **extra,
        },
    )


def _train_on_node(recipe: str, job: Message, node_config: dict[str, object]) -> Message:
    """A fresh ClientApp context of client 1 says hello, then answers ``job``."""
    context = _context({"client-id": 1, **node_config})
    _ask(HELLO, _hello(recipe), context)
    request = flwr_app.Message(pack(encode(job)), dst_node_id=2, message_type=TRAIN)
    return decode(unpack(answer(request, context).content))


def test_a_dpsgd_job_trains_with_a_noise_key_the_node_made_and_the_server_never_held(
    mnist_dir, tmp_path
):
    from fedgen.engine.backends.local_training import OWN_NOISE_KEY, answer_job, job_message
    from fedgen.experiment import build_experiment
    from fedgen.privacy.noise_key import client_noise_key
    from fedgen.types import ClientInstruction

    # Prepare: a DP-SGD recipe and client 1's round-0 job as the Flower backend sends
    # it (no key), and as a simulation would (the key derived from the run's).
    cfg = _dpsgd_config(mnist_dir)
    fed = build_experiment(cfg).federation
    recipe = RecipeClientSide(cfg).recipe
    work = fed.local_work(fed.global_state, 0)
    ins = ClientInstruction(1, 12345)
    deployed_job = job_message(ins, work, 4, key_at_client=True)
    simulated_job = job_message(ins, work, 4)
    derived = client_noise_key(work.noise_key, 1)
    assert work.noise_key is not None and derived is not None
    assert deployed_job.meta["noise_key"] == OWN_NOISE_KEY

    def update(state_dir: Path) -> dict[str, torch.Tensor]:
        reply = _train_on_node(recipe, deployed_job, {"state-dir": str(state_dir)})
        assert "error" not in reply.meta and reply.meta["failure"] is None, reply.meta
        return reply.arrays

    # Execute: the node answers the deployed job twice (a restart keeps its state-dir),
    # another node with its own state-dir once; the simulation's worker answers the
    # simulated job (the update a server holding the run's key could recompute); and
    # the node is handed the simulated job, key and all.
    first = update(tmp_path / "node")
    restarted = update(tmp_path / "node")
    other_node = update(tmp_path / "other")
    kit = RecipeClientSide(cfg).open()
    reply, _ = answer_job(encode(simulated_job), kit.task, kit, None, None)
    server_derivable = decode(reply).arrays
    handed_a_key = _train_on_node(recipe, simulated_job, {"state-dir": str(tmp_path / "node")})
    # Assert: the node's key is its own (not the one the server could derive), kept
    # owner-readable in its state-dir, and it alone decides the noise.
    (key_file,) = (tmp_path / "node" / "keys").glob("*.json")
    kept = json.loads(key_file.read_text())
    assert len(kept["noise_key"]) == 64 and bytes.fromhex(kept["noise_key"]) != derived
    assert key_file.stat().st_mode & 0o077 == 0
    assert first.keys() == restarted.keys() == other_node.keys() == server_derivable.keys()
    assert all(torch.equal(first[k], restarted[k]) for k in first)
    assert not all(torch.equal(first[k], other_node[k]) for k in first)
    assert not all(torch.equal(first[k], server_derivable[k]) for k in first)
    # A job that hands the node a key is refused: no server may choose its noise.
    assert "the job carries a DP noise key" in str(handed_a_key.meta["error"])


def test_root_seeded_dpsgd_noise_needs_the_nodes_consent(mnist_dir, tmp_path):
    from fedgen.engine.backends.local_training import job_message
    from fedgen.experiment import build_experiment
    from fedgen.types import ClientInstruction

    # Prepare: a DP-SGD recipe whose noise derives from the root seed, which the server
    # (and anyone with the config) can regenerate.
    cfg = _dpsgd_config(mnist_dir, noise_seed="root")
    fed = build_experiment(cfg).federation
    job = job_message(ClientInstruction(1, 7), fed.local_work(fed.global_state, 0), 4, True)
    assert job.meta["noise_key"] is None
    recipe = RecipeClientSide(cfg).recipe
    # Execute: a node that did not accept it, and one whose operator did.
    refused = _train_on_node(recipe, job, {"state-dir": str(tmp_path / "a")})
    accepted = _train_on_node(recipe, job, {"root-noise": True, "state-dir": str(tmp_path / "b")})
    # Assert
    assert "--node-config 'root-noise=true'" in str(refused.meta["error"])
    assert "error" not in accepted.meta and accepted.meta["failure"] is None


def test_a_deployed_clients_noise_is_bound_to_the_whole_job(mnist_dir):
    from fedgen.engine.backends.local_training import answer_job, job_message
    from fedgen.experiment import build_experiment
    from fedgen.types import ClientInstruction

    # Prepare: a deployed client's round-0 job, and jobs a server might send instead,
    # each changing one thing: the model, the seed, the round, the config.
    cfg = _dpsgd_config(mnist_dir)
    fed = build_experiment(cfg).federation
    work = fed.local_work(fed.global_state, 0)
    other = {k: v + 1 if v.is_floating_point() else v for k, v in fed.global_state.items()}
    jobs = {
        "job": job_message(ClientInstruction(1, 99), work, 4, True),
        "model": job_message(ClientInstruction(1, 99), fed.local_work(other, 0), 4, True),
        "seed": job_message(ClientInstruction(1, 98), work, 4, True),
        "round": job_message(
            ClientInstruction(1, 99), fed.local_work(fed.global_state, 1), 4, True
        ),
        "config": job_message(ClientInstruction(1, 99, {"lr": 1e-3}), work, 4, True),
    }
    kit = RecipeClientSide(cfg).open()
    engine = kit.task.privacy_engine
    assert engine is not None
    own = b"k" * 32

    def key_used(job: Message) -> bytes | None:
        reply, _ = answer_job(encode(job), kit.task, kit, None, None, own_noise_key=own)
        assert decode(reply).meta["failure"] is None
        return engine.noise_key

    # Execute
    used = {name: key_used(job) for name, job in jobs.items()}
    again = key_used(jobs["job"])
    # Assert: each change draws fresh noise; the same job resent draws the same.
    assert len(set(used.values())) == len(jobs) and own not in used.values()
    assert again == used["job"]


def test_a_job_asking_for_the_clients_own_key_needs_one():
    from fedgen.engine.backends.base import LocalWork
    from fedgen.engine.backends.local_training import job_message, work_from_job
    from fedgen.types import ClientInstruction

    work = LocalWork(None, {}, [], 2, None, noise_key=bytes(32))  # type: ignore[arg-type]
    job = decode(encode(job_message(ClientInstruction(0, 1), work, 1, key_at_client=True)))
    with pytest.raises(WireError, match="a key of its own, and it holds none"):
        work_from_job(job, None, [], None, None)  # type: ignore[arg-type]
    _, got, _ = work_from_job(job, None, [], None, None, own_noise_key=b"k" * 32)  # type: ignore[arg-type]
    assert got.own_noise_key(0) == b"k" * 32


def test_the_flower_backends_job_carries_no_noise_key():
    from fedgen.engine.backends.base import LocalWork
    from fedgen.engine.backends.flower import FlowerBackend, NodeHello
    from fedgen.engine.backends.local_training import OWN_NOISE_KEY
    from fedgen.privacy.noise_key import client_noise_key
    from fedgen.types import ClientInstruction

    backend = FlowerBackend()
    backend.nodes = {3: NodeHello(7, 3, 100, "00" * 32, __version__)}
    key = bytes(range(32))
    work = LocalWork(None, {"w": torch.ones(2)}, [], 2, None, noise_key=key)  # type: ignore[arg-type]
    message, nbytes, failure = backend._job(ClientInstruction(3, 11), work, 4)
    assert failure is None and nbytes > 0
    sent = decode(unpack(message.content))
    derived = client_noise_key(key, 3)
    assert derived is not None and sent.meta["noise_key"] == OWN_NOISE_KEY
    assert key.hex() not in str(sent.meta) and derived.hex() not in str(sent.meta)


def test_a_deployment_names_the_run_by_its_ledger_or_its_noise_key(mnist_dir):
    from tiny_federation import tiny_config

    from fedgen.experiment import build_experiment

    ledger = build_experiment(tiny_config(mnist_dir)).federation
    keyed = build_experiment(tiny_config(mnist_dir, ledger="false")).federation
    root = build_experiment(tiny_config(mnist_dir, ledger="false", noise_seed="root")).federation
    assert ledger.audit is not None and ledger.deployment_run_id == ledger.audit.run_id
    assert keyed.noise_key is not None and len(str(keyed.deployment_run_id)) == 32
    assert keyed.noise_key.hex()[:32] != keyed.deployment_run_id
    assert root.deployment_run_id is None


def test_a_dpsgd_hello_needs_a_state_dir_and_a_dp_only_node_refuses_other_recipes(
    mnist_dir, recipe, tmp_path
):
    dpsgd = RecipeClientSide(_dpsgd_config(mnist_dir)).recipe
    # No state-dir: a restart would lose the node's noise key and its record of rounds.
    no_dir = _ask(HELLO, _hello(dpsgd), _context({"client-id": 1}))
    assert "needs a state-dir" in str(no_dir["error"])
    # A node whose operator set a budget trains with DP-SGD only.
    node = {"client-id": 1, "state-dir": str(tmp_path), "max-epsilon": 8.0}
    plain = _ask(HELLO, _hello(recipe), _context(node))
    assert "trains only with DP-SGD" in str(plain["error"])
    assert "error" not in _ask(HELLO, _hello(dpsgd), _context(node))


def test_a_dpsgd_node_refuses_extra_steps_and_sends_no_losses(mnist_dir, tmp_path):
    from dataclasses import replace

    from fedgen.engine.backends.local_training import job_message
    from fedgen.experiment import build_experiment
    from fedgen.types import ClientInstruction

    cfg = _dpsgd_config(mnist_dir)
    fed = build_experiment(cfg).federation
    recipe = RecipeClientSide(cfg).recipe
    work = fed.local_work(fed.global_state, 0)
    node = {"state-dir": str(tmp_path)}
    greedy = job_message(ClientInstruction(1, 5), replace(work, local_steps=20), 4, True)
    refused = _train_on_node(recipe, greedy, node)
    honest = _train_on_node(recipe, job_message(ClientInstruction(1, 5), work, 4, True), node)
    assert "asks for 20 DP-SGD steps" in str(refused.meta["failure"])
    assert honest.meta["failure"] is None
    # DP-SGD noises gradients, not losses: a loss of the client's batches stays with it.
    assert not any(k.startswith("loss/") for k in honest.meta["metrics"]), honest.meta["metrics"]


def test_a_hello_that_changes_the_recipe_gets_no_second_answer_with_the_same_noise(
    mnist_dir, tmp_path
):
    from fedgen.engine.backends.local_training import job_message
    from fedgen.experiment import build_experiment
    from fedgen.types import ClientInstruction

    # Prepare: round 0's DP-SGD job, answered once under the run's recipe
    cfg = _dpsgd_config(mnist_dir)
    fed = build_experiment(cfg).federation
    job = job_message(ClientInstruction(1, 5), fed.local_work(fed.global_state, 0), 4, True)
    node = {"state-dir": str(tmp_path)}
    first = _train_on_node(RecipeClientSide(cfg).recipe, job, node)
    # Execute: the same job after a hello whose recipe runs longer (a resume may), then
    # after one whose clip bound differs (the same noise over another update)
    longer = _dpsgd_config(mnist_dir, **{"federation.rounds": 9})
    again = _train_on_node(RecipeClientSide(longer).recipe, job, node)
    clip = "{noise_multiplier: 1.0, max_grad_norm: 2.0, delta: 1.0e-5}"
    reclipped = _dpsgd_config(mnist_dir, dpsgd=clip)
    other = _train_on_node(RecipeClientSide(reclipped).recipe, job, node)
    # Assert
    assert first.meta["failure"] is None and again.meta["failure"] is None
    assert all(torch.equal(first.arrays[k], again.arrays[k]) for k in first.arrays)
    assert "round 0 was trained here as another job" in str(other.meta["failure"])


def test_a_refused_job_files_no_private_state_under_the_round_it_names(mnist_dir, tmp_path):
    from tiny_federation import tiny_config

    from fedgen.engine.backends.local_training import job_message
    from fedgen.experiment import build_experiment
    from fedgen.types import ClientInstruction

    # Prepare: FedPer's personal layers stay on the node, one version per round trained
    personal = (
        "{batch_size: 16, generator_width: 8, discriminator_width: 8, personal: [generator.embed]}"
    )
    cfg = tiny_config(mnist_dir, **{"task.params": personal, "ledger": "false"})
    fed = build_experiment(cfg).federation
    recipe = RecipeClientSide(cfg).recipe
    node = {"state-dir": str(tmp_path)}
    honest = job_message(ClientInstruction(1, 5), fed.local_work(fed.global_state, 0), 4, True)
    trained = _train_on_node(recipe, honest, node)
    assert "error" not in trained.meta and trained.meta["failure"] is None, trained.meta
    # Execute: a job for another client, named round 99, reaches client 1's node
    stray = job_message(ClientInstruction(2, 5), fed.local_work(fed.global_state, 99), 4, True)
    refused = _train_on_node(recipe, stray, node)
    # Assert: refused, and only round 0's version is kept
    assert "reached client 1" in str(refused.meta.get("failure")), refused.meta
    assert sorted(p.name for p in tmp_path.rglob("round-*.wire")) == ["round-0.wire"]


def test_a_nodes_refusal_reaches_the_server_in_its_own_words():
    from fedgen.engine.backends.flower import FlowerBackend, _Reply

    said = Message({}, {"error": "ValueError: a job before the hello"})
    result = FlowerBackend()._result(3, 10, _Reply(said, nbytes=40))
    assert result.failure == "the node refused the job: ValueError: a job before the hello"


def test_a_dpsgd_node_refuses_a_run_id_path_ditto_steps_and_dropping_dp_midrun(
    mnist_dir, recipe, tmp_path
):
    from fedgen.engine.backends.local_training import job_message
    from fedgen.experiment import build_experiment
    from fedgen.strategies.ditto import DITTO_LAMBDA
    from fedgen.types import ClientInstruction

    cfg = _dpsgd_config(mnist_dir)
    fed = build_experiment(cfg).federation
    dpsgd = RecipeClientSide(cfg).recipe
    work = fed.local_work(fed.global_state, 0)
    node = {"state-dir": str(tmp_path)}
    # A run id is a file name on the node: one that climbs out of it is refused.
    escaping = _hello(dpsgd, run_id="x/../run-" + "ab" * 16)
    said = _ask(HELLO, escaping, _context({"client-id": 1, **node}))
    assert "is not 1-80 letters, digits or '-'" in str(said["error"])
    # Ditto's personal steps are DP-SGD steps no accountant counts.
    ditto = ClientInstruction(1, 5, {DITTO_LAMBDA: 0.1})
    refused = _train_on_node(dpsgd, job_message(ditto, work, 4, True), node)
    assert "Ditto's personal steps" in str(refused.meta["failure"])
    # Once the client trained rounds of the run with DP-SGD, a recipe without it is
    # refused (its updates would carry the examples without noise).
    trained = _train_on_node(dpsgd, job_message(ClientInstruction(1, 5), work, 4, True), node)
    assert trained.meta["failure"] is None
    dropped = _ask(HELLO, _hello(recipe), _context({"client-id": 1, **node}))
    assert "recipe now has no dpsgd section" in str(dropped["error"])


def test_the_noise_binding_covers_the_private_state():
    from fedgen.engine.backends.local_training import job_binding

    mine = {"d.weight": torch.ones(3)}
    assert job_binding("job", mine) == job_binding("job", {"d.weight": torch.ones(3)})
    assert job_binding("job", mine) != job_binding("job", {"d.weight": torch.zeros(3)})
    assert job_binding("job", None) == job_binding("job", {}) != job_binding("job2", None)


@pytest.mark.parametrize(
    ("noise_seed", "node_config", "released"),
    [("secret", {}, True), ("root", {}, False), ("root", {"root-noise": True}, True)],
)
def test_a_node_alone_in_a_secure_dp_round_adds_its_own_noise_or_keeps_its_update(
    mnist_dir, tmp_path, noise_seed, node_config, released
):
    from tiny_federation import tiny_config

    from fedgen.engine.backends.local_training import job_message
    from fedgen.engine.backends.secagg_client import lone_noise
    from fedgen.experiment import build_experiment
    from fedgen.transforms.secagg.codec import from_message, to_message
    from fedgen.transforms.secagg.requests import LoneRelease, LoneRequest
    from fedgen.types import ClientInstruction

    # Prepare: client-level DP over a secure sum, the job as the Flower backend sends it
    # (the node draws with its own key), or with root-seeded noise, which the server
    # could regenerate and subtract.
    cfg = tiny_config(
        mnist_dir,
        **{
            "ledger": "false",
            "noise_seed": noise_seed,
            "federation.local_steps": 1,
            "strategy.params": "{min_clients: 1, weighted: false, fixed_denominator: true, "
            "sampling: poisson, fraction: 1.0}",
            "transforms": "[{name: clip, params: {max_norm: 1.0}}, {name: client_dp, "
            "params: {noise_multiplier: 1.0, delta: 1.0e-5}}, {name: secagg}]",
        },
    )
    fed = build_experiment(cfg).federation
    work = fed.local_work(fed.global_state, 0)
    job = job_message(ClientInstruction(1, 7), work, 4, key_at_client=noise_seed == "secret")
    segments, stds = lone_noise(fed.transforms, fed.global_state, fed.global_state, frozenset())
    # Execute: the node trains and holds its update; the server finds it alone.
    context = _context({"client-id": 1, "state-dir": str(tmp_path), **node_config})
    _ask(HELLO, _hello(RecipeClientSide(cfg).recipe), context)
    trained = flwr_app.Message(pack(encode(job)), dst_node_id=2, message_type=TRAIN)
    assert decode(unpack(answer(trained, context).content)).meta["failure"] is None
    lone = encode(to_message(LoneRequest(0, segments, stds)))
    request = flwr_app.Message(pack(lone), dst_node_id=2, message_type=HELLO)
    reply = decode(unpack(answer(request, context).content))
    # Assert: the update comes back with the recipe's noise in it, or not at all.
    if released:
        release = from_message(reply)
        assert isinstance(release, LoneRelease) and release.values.shape == (sum(segments),)
        assert release.values.std() > 0.5  # z C = 1 per coordinate, far above the update
    else:
        assert "will not send its update alone" in str(reply.meta["error"])
