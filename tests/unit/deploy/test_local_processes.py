"""The local deployment's process handling: a finished child is seen as finished and
reaped, so neither waiting for a run's log stream nor stopping a group hangs on it."""

from __future__ import annotations

import sys
import time

from fedgen.deploy.local import _running, _start, kill_group


def test_a_child_that_ended_is_seen_ended_and_stopping_its_group_returns_at_once(tmp_path):
    # Prepare: a child in its own session that ends by itself after a moment.
    pid = _start([sys.executable, "-c", "import time; time.sleep(0.3)"], tmp_path / "a.log", {})
    assert _running(pid)
    deadline = time.monotonic() + 30
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Assert: seen ended (reaped, so no zombie answers signals in its name).
    assert not _running(pid)
    # Execute: stopping the group of a leader that already ended takes no grace period.
    start = time.monotonic()
    kill_group(pid, grace=10.0)
    assert time.monotonic() - start < 5.0


def test_stopping_a_live_group_ends_it_without_waiting_out_the_grace(tmp_path):
    # Prepare: a child that would run for a minute.
    pid = _start([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b.log", {})
    # Execute
    start = time.monotonic()
    kill_group(pid, grace=10.0)
    # Assert: SIGTERM ended it, and the leader's zombie did not hold the wait to the end.
    assert time.monotonic() - start < 5.0
    assert not _running(pid)


def test_deploy_run_before_deploy_up_says_to_start_one(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fedgen.cli import app

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "nodeployment"
    folder.mkdir()

    result = CliRunner().invoke(
        app, ["deploy", "run", "--folder", str(folder), "--out", str(tmp_path / "r")]
    )

    assert isinstance(result.exception, SystemExit) and result.exit_code == 2
    assert "start one with fedgen deploy up" in " ".join(result.output.split())
    assert list(folder.iterdir()) == []  # nothing written into it


def test_deploy_run_refuses_an_out_holding_its_own_recipe(tmp_path):
    from typer.testing import CliRunner

    from fedgen.cli import app

    recipe = tmp_path / "config.yaml"
    recipe.write_text("# mine\nfederation: {rounds: 1}\n")

    result = CliRunner().invoke(app, ["deploy", "run", str(recipe), "--out", str(tmp_path)])

    assert isinstance(result.exception, SystemExit) and result.exit_code == 2
    assert "would overwrite the recipe" in " ".join(result.output.split())
    assert recipe.read_text() == "# mine\nfederation: {rounds: 1}\n"


def test_down_leaves_alone_a_group_whose_leader_is_not_the_process_it_started(tmp_path):
    # Prepare: a deployment whose recorded SuperLink group id now names another process
    # (after a reboot, ids are reused): its recorded start time no longer matches.
    import json

    from fedgen.deploy.local import LocalDeployment, down

    pid = _start([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "c.log", {})
    try:
        dep = LocalDeployment(str(tmp_path), port=1, nodes=0, superlink=pid)
        dep.save()
        saved = json.loads((tmp_path / "deployment.json").read_text())
        assert saved["started"][str(pid)] > 0
        saved["started"][str(pid)] += 1  # the process of that id started at another time
        (tmp_path / "deployment.json").write_text(json.dumps(saved))
        # Execute
        down(tmp_path)
        # Assert: not signalled, and the deployment's file is gone all the same
        assert _running(pid) and not (tmp_path / "deployment.json").exists()
        # The deployment's own process, recorded as it started, is stopped.
        dep.save()
        down(tmp_path)
        assert not _running(pid)
    finally:
        kill_group(pid, grace=1.0)


def test_down_stops_the_children_of_a_leader_gone_and_spares_groups_of_another_boot(tmp_path):
    # Prepare: a SuperLink-like leader that started a child in its group and then died
    # (reaped): its children still run and are the deployment's to stop.
    import json
    import os

    from fedgen.deploy.local import LocalDeployment, down

    child_pid = tmp_path / "child.pid"
    code = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(child_pid)!r}, 'w').write(str(p.pid))"
    )
    leader = _start([sys.executable, "-c", code], tmp_path / "d.log", {})
    dep = LocalDeployment(str(tmp_path), port=1, nodes=0, superlink=leader)
    dep.save()
    deadline = time.monotonic() + 30
    while (_running(leader) or not child_pid.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(child_pid.read_text())
    try:
        # A copy of the record from another boot is left alone (its ids name others).
        saved = json.loads((tmp_path / "deployment.json").read_text())
        (tmp_path / "deployment.json").write_text(json.dumps({**saved, "boot_id": "other"}))
        down(tmp_path)
        os.kill(child, 0)  # still running
        # Execute: this boot's record stops the group, whose leader is gone
        (tmp_path / "deployment.json").write_text(json.dumps(saved))
        down(tmp_path)
        # Assert
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the leader's child outlived down")
    finally:
        kill_group(leader, grace=1.0)


def test_stopping_a_supernode_spares_a_group_whose_leader_is_another_process(tmp_path):
    # Prepare: SuperNode 0's recorded group id now names a process that started at
    # another time than recorded (ids are reused), as `down` already checks.
    from fedgen.deploy.local import LocalDeployment, stop_supernode

    pid = _start([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "e.log", {})
    try:
        dep = LocalDeployment(str(tmp_path), port=1, nodes=1, supernodes=[pid])
        dep.save()
        dep.started[str(pid)] += 1
        # Execute: both ways of stopping it
        stop_supernode(dep, 0, crash=True)
        stop_supernode(dep, 0, crash=False)
        assert _running(pid)
        # Assert: with the start time as recorded, it is stopped.
        dep.started[str(pid)] -= 1
        stop_supernode(dep, 0, crash=False)
        assert not _running(pid)
    finally:
        kill_group(pid, grace=1.0)
