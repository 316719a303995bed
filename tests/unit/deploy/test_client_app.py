"""fedgen's ClientApp refuses bad requests with a reply that says why (no network here:
the handler is called with real Flower messages and a real Context)."""

from __future__ import annotations

import numpy as np
import pytest

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


def _hello(recipe: str, version: str = __version__) -> bytes:
    return encode(Message({}, {"recipe": recipe, "fedgen": version, "run_id": "ab" * 16}))


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


def test_another_fedgen_version_is_refused(recipe):
    said = _ask(HELLO, _hello(recipe, "0.0.1"), _context({"client-id": 0}))
    assert "this SuperNode runs fedgen" in str(said["error"])
    assert "install the same fedgen on both" in str(said["error"])


def test_a_recipe_this_fedgen_cannot_read_is_refused(recipe):
    unreadable = recipe.replace('"rounds": 3', '"rounds": "many"')
    said = _ask(HELLO, _hello(unreadable), _context({"client-id": 0}))
    assert "cannot build the recipe's client" in str(said["error"])
    assert "federation.rounds" in str(said["error"])


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
