"""A real Flower deployment on loopback: one SuperLink, three SuperNodes, TLS and node
authentication, fedgen's ServerApp and ClientApp; the model it trains is the one the
in-process simulation trains, bit for bit. And a deployment of one SuperNode, whose
client releases its own noised update in every round (client-level DP's lone round).

Slow by nature (Flower polls every 3 s and starts a ClientApp process per message):
about four minutes for the module.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fedgen.config import load_config
from fedgen.deploy import local
from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint
from fedgen.experiment import run_experiment
from fedgen.ledger import verify_run

pytest.importorskip("flwr")

#: Three MNIST clients, the tiny cGAN, evaluation off, one torch thread (sums split
#: across threads differ in the last bits, and an earlier test may have left this
#: process at another count); ``{rest}`` adds the strategy, transforms and rounds.
BASE = """\
threads: 1
data:
  sources: [mnist]
  data_dir: {data}
  num_clients: 3
  partition: {{kind: iid, params: {{}}}}
task:
  params: {{batch_size: 16, generator_width: 8, discriminator_width: 8}}
eval: {{every: 0, final: false}}
backend: {{name: inprocess}}
"""

#: Client-level DP over secure aggregation, noise seeded from the root seed (so a
#: simulation draws the same); the masks cancel exactly, so the sums agree bit for bit.
DP = """\
seed: 3
strategy:
  params: {fraction: 1.0, sampling: poisson, weighted: false, fixed_denominator: true,
           min_clients: 1}
transforms:
  - name: clip
    params: {max_norm: 1.0}
  - name: client_dp
    params: {noise_multiplier: 0.5, delta: 1.0e-5}
  - name: secagg
noise_seed: root
federation: {rounds: 2, local_steps: 2}
"""

PLAIN = """\
seed: 5
strategy:
  params: {fraction: 1.0, min_clients: 2}
federation: {rounds: 2, local_steps: 2}
"""


def _recipe(path: Path, mnist_dir: Path, rest: str) -> Path:
    path.write_text(BASE.format(data=mnist_dir) + rest)
    return path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deployment")
    dep = local.up(folder, 3)
    yield dep
    local.down(folder)


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    _, last = list_checkpoints(run_dir / "checkpoints")[-1]
    return load_checkpoint(last)["federation"]["global_state"]


def _run_stopped_once(
    deployment: local.LocalDeployment, recipe: Path, run_dir: Path
) -> local.RunOutcome:
    """Run ``recipe``, stop its ServerApp once round 0 is checkpointed, start it again on
    the same run folder; the second run's outcome."""
    folder = Path(deployment.folder)
    handle = local.start_run(folder, recipe, run_dir)
    deadline = time.monotonic() + 300
    while not list_checkpoints(run_dir / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.5)
    local.stop_run(folder, handle.run_id)
    stopped = local.wait_run(folder, handle, 120)
    assert stopped.status != "finished:completed", "the run ended before it could be stopped"
    kept = {path: path.stat().st_mtime_ns for _, path in list_checkpoints(run_dir / "checkpoints")}
    # A node whose ClientApp held a message of the stopped run may wait for it forever
    # (see local.restart_nodes); an operator restarts them, keeping keys and state.
    local.restart_nodes(deployment)
    outcome = local.run(folder, recipe, run_dir, timeout=600)
    # Resumed, not restarted: the stopped run's checkpoints were read, never rewritten.
    # (Not the ServerApp's "resuming the run" warning: Flower's log stream can end
    # before the app's last output is pushed, and did once on a loaded machine.)
    assert kept and all(path.stat().st_mtime_ns == ns for path, ns in kept.items())
    return outcome


def test_a_deployment_stopped_and_resumed_trains_the_simulations_model_bit_for_bit(
    deployment, mnist_dir, tmp_path
):
    # One deployment checks both promises (each run costs minutes of Flower's polling):
    # round 0 runs on Flower from the start, round 1 on Flower after the ServerApp was
    # stopped and started again on the same run folder, and the model still equals the
    # uninterrupted simulation's, bit for bit.
    # Prepare: a 2-round cGAN with client-level DP (noise seeded from the root seed,
    # so the simulation draws the same noise) over secure aggregation, whose phases
    # cross Flower as messages, over 3 clients, one per SuperNode.
    recipe = _recipe(tmp_path / "recipe.yaml", mnist_dir, DP)
    # Execute: deployed with one stop after round 0; the same recipe simulated in
    # process without a stop.
    outcome = _run_stopped_once(deployment, recipe, tmp_path / "deployed")
    run_experiment(load_config(recipe), tmp_path / "simulated", progress=False)
    # Assert
    assert outcome.ok, outcome.log.read_text()[-3000:]
    deployed, simulated = _final_state(tmp_path / "deployed"), _final_state(tmp_path / "simulated")
    assert deployed.keys() == simulated.keys()
    for key in deployed:
        assert torch.equal(deployed[key], simulated[key]), key
    # The ledger of the deployed run verifies: every update signed by its node's own key,
    # the same key after the restart (kept in the node's state-dir).
    assert verify_run(tmp_path / "deployed").ok
    # Both count the same bytes: the same wire messages crossed.
    lines = {
        name: (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        for name in ("deployed", "simulated")
    }
    assert len(lines["deployed"]) == 2 and '"epsilon"' in lines["deployed"][-1]
    for deployed_line, simulated_line in zip(lines["deployed"], lines["simulated"], strict=True):
        assert _without_seconds(deployed_line) == _without_seconds(simulated_line)


def _without_seconds(line: str) -> dict[str, object]:
    record = json.loads(line)
    record.pop("seconds", None)  # withheld under client-level DP (it grows with the cohort)
    return record


#: DP's recipe with the noise drawn by each node's own key (not root-seeded) and tiny,
#: for one client (the test cuts BASE to 1): every round is a lone
#: round, which a secure sum cannot hide, so the node adds the round's noise itself
#: (drawn with its own key) and releases the noised update (``LoneRequest``). The noise
#: is tiny here (z = 1e-5: its norm over the model's 77k floats is about 0.003, the
#: update's about 0.09), so a release shows as the simulation's model, and a round that
#: released only noise (a refused or unusable release) as a model that did not move.
LONE = DP.replace("noise_multiplier: 0.5", "noise_multiplier: 1.0e-5").replace(
    "noise_seed: root\n", ""
)


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.double().reshape(-1) for v in state.values() if v.is_floating_point()])


def _states(run_dir: Path) -> list[torch.Tensor]:
    return [
        _flat(load_checkpoint(path)["federation"]["global_state"])
        for _, path in list_checkpoints(run_dir / "checkpoints")
    ]


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
def test_a_deployed_lone_client_releases_its_noised_update(mnist_dir, tmp_path):
    # Prepare: a deployment of one SuperNode and a one-client recipe (BASE's 3 clients
    # cut to 1): client-level DP over secure aggregation, the noise drawn with the node's
    # own key (not root-seeded, so the node agrees to release alone).
    recipe = _recipe(tmp_path / "recipe.yaml", mnist_dir, LONE)
    recipe.write_text(recipe.read_text().replace("num_clients: 3", "num_clients: 1"))
    config = load_config(recipe)
    assert config.data.num_clients == 1 and config.noise_seed != "root"
    assert "noise_multiplier: 1.0e-5" in LONE
    folder = tmp_path / "deployment"
    local.up(folder, 1)
    try:
        # Execute
        outcome = local.run(folder, recipe, tmp_path / "deployed", timeout=600)
    finally:
        local.down(folder)
    run_experiment(load_config(recipe), tmp_path / "simulated", progress=False)
    # Assert: both rounds released (no failure, epsilon charged, the figures a round of
    # more clients shows) and the ledger verifies.
    assert outcome.ok, outcome.log.read_text()[-3000:]
    deployed_lines = (tmp_path / "deployed" / "metrics.jsonl").read_text().splitlines()
    simulated_lines = (tmp_path / "simulated" / "metrics.jsonl").read_text().splitlines()
    rounds = [json.loads(x) for x in deployed_lines]
    assert [r["round"] for r in rounds] == [0, 1]
    for deployed_round, simulated_round in zip(rounds, simulated_lines, strict=True):
        assert "round_failed" not in deployed_round and deployed_round["epsilon"] > 0
        assert deployed_round.keys() == json.loads(simulated_round).keys()
    assert verify_run(tmp_path / "deployed").ok
    # The deployed model is the simulation's up to the two draws of tiny noise: the
    # node's update reached the model in both rounds.
    deployed, simulated = _states(tmp_path / "deployed"), _states(tmp_path / "simulated")
    assert len(deployed) == len(simulated) == 2
    moved = (simulated[1] - simulated[0]).norm()
    assert moved > 0.02
    for d, s in zip(deployed, simulated, strict=True):
        assert (d - s).norm() < 0.2 * moved
    # And the release carried the round's noise: round 0 trained the same update in
    # both runs, so the two models differ by two independent draws of noise (the
    # deployed node's key, the simulation's), sqrt(2) std sqrt(P) in norm; a release
    # without noise would differ by one draw (1/sqrt(2) of it).
    std = rounds[0]["clientleveldp/noise_std"]  # of the mean; m = 1 here
    expected = math.sqrt(2) * std * math.sqrt(deployed[0].numel())
    assert 0.9 * expected < float((deployed[0] - simulated[0]).norm()) < 1.1 * expected


def test_a_node_naming_a_client_the_partition_lacks_is_refused(deployment, mnist_dir, tmp_path):
    # Prepare: a fourth SuperNode that says it is client 7 of a 3-client partition.
    folder = Path(deployment.folder)
    pgid = local.add_node(deployment, 7)
    try:
        local.wait_online(deployment, 4, 60)
        one_round = DP.replace("rounds: 2", "rounds: 1")
        recipe = _recipe(tmp_path / "recipe.yaml", mnist_dir, one_round)
        # Execute
        outcome = local.run(folder, recipe, tmp_path / "run", timeout=300)
    finally:
        local.kill_group(pgid)
    # Assert: the run fails before any round, naming the node's fault.
    assert not outcome.ok
    log = outcome.log.read_text()
    assert "client 7 does not exist: the recipe's partition has clients 0..2" in log
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")


def _bad_node(deployment, ca: Path, key: Path, log: Path) -> subprocess.Popen[bytes]:
    """A SuperNode started with ``ca`` and ``key``, its output in ``log`` (a file: the
    child it starts would hold a pipe open)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                local._tool("flower-supernode"),
                "--superlink",
                deployment.address,
                "--root-certificates",
                str(ca),
                "--auth-supernode-private-key",
                str(key),
                "--node-config",
                "client-id=0",
                "--port",
                str(local.free_port()),
            ],
            env=local.flower_env(Path(deployment.folder)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_a_node_that_distrusts_the_superlink_or_is_not_trusted_cannot_join(deployment, tmp_path):
    # Prepare: a CA the SuperLink's certificate does not chain to, and a node key that
    # nobody registered.
    from fedgen.deploy.certs import make_ca, make_node_key

    folder = Path(deployment.folder)
    rogue_ca = make_ca(tmp_path / "rogue", "rogue CA")
    stranger = tmp_path / "stranger"
    make_node_key(stranger)
    # Execute: both at once (each takes seconds to be refused).
    distrusting = _bad_node(deployment, rogue_ca, folder / "keys" / "node0", tmp_path / "a.log")
    untrusted = _bad_node(deployment, folder / "certs" / "ca.crt", stranger, tmp_path / "b.log")
    try:
        codes = [distrusting.wait(timeout=120), untrusted.wait(timeout=120)]
    finally:
        local.kill_group(distrusting.pid)
        local.kill_group(untrusted.pid)
    # Assert: one refused at the TLS handshake, the other by node authentication.
    assert codes[0] != 0 and codes[1] != 0
    assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "a.log").read_text()
    assert "Failed to activate SuperNode" in (tmp_path / "b.log").read_text()


#: Losing a SuperNode costs minutes of the suite: the SuperLink takes a node for gone
#: only after missed heartbeats (30 s apart), and the hello waits for it till then. So
#: these tests are defined only with FEDGEN_FLOWER_NODE_LOSS_TEST=1 (not skipped:
#: absent); on 2026-12-01 the stopped variant passed (350 s, loaded machine), and the
#: crash passed in an earlier form of this test (killed between two ServerApp runs, 178 s).
if os.environ.get("FEDGEN_FLOWER_NODE_LOSS_TEST"):

    @pytest.mark.parametrize("loss", ["stopped", "crashed"])
    def test_a_lost_node_fails_only_its_client(deployment, mnist_dir, tmp_path, loss):
        # Prepare: SuperNode 2 is gone before the run starts.
        folder = Path(deployment.folder)
        recipe = _recipe(tmp_path / "recipe.yaml", mnist_dir, PLAIN)
        local.stop_supernode(deployment, 2, crash=loss == "crashed")
        # Execute
        try:
            outcome = local.run(folder, recipe, tmp_path / "run", timeout=900)
        finally:
            local.restart_supernode(deployment, 2)
        # Assert: every round went on with the other two.
        assert outcome.ok, outcome.log.read_text()[-3000:]
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        rounds = [json.loads(x) for x in lines]
        assert [r["round"] for r in rounds] == [0, 1]
        for r in rounds:
            assert r["clients"] == 2 and r["failed_clients"] == {"2": "no SuperNode holds it"}
