"""A whole Flower deployment on this machine, for a demonstration or a test.

``up`` makes a CA and the SuperLink's certificate, starts a SuperLink with TLS
and SuperNode authentication (its state in SQLite, so a restart keeps the
registrations), registers one key per SuperNode and starts N SuperNodes, node
``i`` holding client ``i``; ``run`` submits a recipe as a Flower run of fedgen's
app and waits for it to end; ``down`` stops every process ``up`` started. The
same commands, pointed at other hosts, are what the README shows for several
machines: only the addresses and who holds which key change.

Everything lives in one folder: ``certs/``, ``keys/`` (node keys, owner-only),
``flwr-home/`` (Flower's own state and the CLI's connection), ``nodes/<i>/``
(each SuperNode's ``state-dir``), ``logs/`` and ``deployment.json`` (ports and
process ids).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedgen.deploy.app_dir import write_app
from fedgen.deploy.certs import make_ca, make_node_key, make_server_cert
from fedgen.errors import FedgenError
from fedgen.files import write_text_atomic

log = logging.getLogger(__name__)

#: The connection name the deployment's Flower CLI config uses.
CONNECTION = "fedgen-local"


class DeployError(FedgenError):
    """A local deployment could not start, run or stop; the message says where to look."""


@dataclass
class LocalDeployment:
    """What ``up`` started (saved as ``deployment.json`` in its folder)."""

    folder: str
    port: int
    nodes: int
    #: Process-group ids: the SuperLink's, then each SuperNode's.
    superlink: int = 0
    supernodes: list[int] = field(default_factory=list)
    #: Each group leader's start time (``/proc``), by process-group id as text, taken
    #: when the deployment first saved it, and the boot they belong to: ``down`` leaves
    #: a group alone once its id names another process (a reboot, or a reused id).
    started: dict[str, int] = field(default_factory=dict)
    boot_id: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def save(self) -> None:
        """Write ``deployment.json`` (atomically), with the start time of every group
        leader it names (saved right after the processes start or restart)."""
        live = [str(p) for p in [self.superlink, *self.supernodes] if p]
        # A group keeps the time taken when it was first saved (just after it started).
        started = {k: v for k, v in self.started.items() if k in live}
        for key in live:
            if key not in started and (when := start_time(int(key))) is not None:
                started[key] = when
        self.started, self.boot_id = started, self.boot_id or boot_id()
        text = json.dumps(asdict(self), indent=1)
        write_text_atomic(Path(self.folder) / "deployment.json", text)

    def still_ours(self, pgid: int) -> bool:
        """Whether process group ``pgid`` may still be this deployment's: not after a
        reboot, nor once a live leader started at another time than recorded. A leader
        gone in the same boot may have left its children in the group: still ours. (True
        where nothing was recorded, as before start times were.)"""
        recorded = self.started.get(str(pgid))
        if recorded is None:
            return True
        if self.boot_id is not None and boot_id() != self.boot_id:
            return False
        now = start_time(pgid)
        return now is None or now == recorded

    @classmethod
    def load(cls, folder: Path) -> LocalDeployment:
        path = folder / "deployment.json"
        if not path.is_file():
            raise DeployError(f"{folder} holds no deployment; start one with fedgen deploy up")
        return cls(**json.loads(path.read_text()))


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field
    22); None where that cannot be read (no such process, not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def boot_id() -> str | None:
    """This boot's id (``/proc/sys/kernel/random/boot_id``); None where it cannot be read."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(folder: Path) -> dict[str, str]:
    """The environment of every Flower process and command of this deployment."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    # SuperLink and SuperNode start flower-superexec, flwr-serverapp and flwr-clientapp
    # by bare name: this venv's must come first.
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(folder / "flwr-home")
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    # Runtime dependency installation would fetch packages (a CUDA torch among them).
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["COLUMNS"] = "200"
    return env


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise DeployError(
            f"{name} is not installed beside {sys.executable}; install fedgen[flower]"
        )
    return str(path)


def _start(argv: list[str], log: Path, env: dict[str, str]) -> int:
    """Start a process in its own session (so ``down`` stops its children too)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return process.pid


def _flwr(folder: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``flwr ARGS --format json``; its JSON answer (``DeployError`` on failure)."""
    done = subprocess.run(
        [_tool("flwr"), *args, "--format", "json"],
        env=flower_env(folder),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise DeployError(
            f"flwr {' '.join(args)} answered no JSON (exit {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()[-600:]}"
        ) from None
    # flwr exits 0 with --format json even when it failed: its "success" field says.
    if not isinstance(answer, dict) or answer.get("success") is False:
        raise DeployError(f"flwr {' '.join(args)} failed: {str(answer)[:600]}")
    return answer


def up(folder: Path, nodes: int, *, timeout: float = 120.0) -> LocalDeployment:
    """Start a SuperLink and ``nodes`` SuperNodes with TLS and node authentication.

    Raises:
        DeployError: a process died or the nodes did not come online within ``timeout``;
            everything started is stopped again first.
    """
    folder = folder.resolve()
    if (folder / "deployment.json").exists():
        raise DeployError(f"{folder} already holds a deployment; fedgen deploy down it first")
    if nodes < 1:
        raise DeployError("a deployment needs at least one SuperNode")
    certs, keys = folder / "certs", folder / "keys"
    make_ca(certs)
    server_pem, server_key = make_server_cert(certs, ["127.0.0.1", "localhost"])
    env = flower_env(folder)
    (folder / "flwr-home").mkdir(parents=True, exist_ok=True)
    dep = LocalDeployment(str(folder), free_port(), nodes)
    (folder / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{dep.address}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n'
    )
    dep.superlink = _start(
        [
            _tool("flower-superlink"),
            "--host",
            "127.0.0.1",
            "--port",
            str(dep.port),
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(server_pem),
            "--ssl-keyfile",
            str(server_key),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--database",
            str(folder / "superlink.db"),
        ],
        folder / "logs" / "superlink.log",
        env,
    )
    dep.save()
    try:
        _wait_listening(dep.port, timeout, folder / "logs" / "superlink.log")
        for i in range(nodes):
            public = make_node_key(keys / f"node{i}")
            _flwr(folder, "supernode", "register", str(public), CONNECTION, "--name", f"node{i}")
            dep.supernodes.append(start_supernode(dep, i))
            dep.save()
        wait_online(dep, nodes, timeout)
    except BaseException:
        down(folder)
        raise
    return dep


def add_node(dep: LocalDeployment, client_id: int) -> int:
    """Register a key for one more SuperNode and start it as client ``client_id``;
    returns its process-group id (stop it with ``kill_group``)."""
    folder = Path(dep.folder)
    name = f"extra{client_id}-{len(list((folder / 'keys').glob('extra*.pub')))}"
    public = make_node_key(folder / "keys" / name)
    _flwr(folder, "supernode", "register", str(public), CONNECTION, "--name", name)
    return start_supernode(dep, client_id, key=name)


def start_supernode(dep: LocalDeployment, i: int, key: str | None = None) -> int:
    """Start a SuperNode that is client ``i``, authenticated with key ``key`` (default
    ``node<i>``); returns its process-group id."""
    folder = Path(dep.folder)
    key = key or f"node{i}"
    state = folder / "nodes" / key
    state.mkdir(parents=True, exist_ok=True)
    return _start(
        [
            _tool("flower-supernode"),
            "--superlink",
            dep.address,
            "--root-certificates",
            str(folder / "certs" / "ca.crt"),
            "--auth-supernode-private-key",
            str(folder / "keys" / key),
            "--node-config",
            f'client-id={i} state-dir="{state}"',
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        folder / "logs" / f"supernode-{key}.log",
        flower_env(folder),
    )


def _wait_listening(port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise DeployError(f"the SuperLink did not listen on port {port} in {timeout:g} s; see {log}")


def online_nodes(dep: LocalDeployment) -> int:
    """How many SuperNodes the SuperLink lists as online."""
    answer = _flwr(Path(dep.folder), "supernode", "list", CONNECTION)
    listed = answer.get("nodes", [])
    return sum(1 for n in listed if isinstance(n, dict) and n.get("status") == "online")


def wait_online(dep: LocalDeployment, nodes: int, timeout: float) -> None:
    """Wait until ``nodes`` SuperNodes are online."""
    deadline = time.monotonic() + timeout
    while (seen := online_nodes(dep)) < nodes:
        if time.monotonic() > deadline:
            raise DeployError(
                f"{seen} of {nodes} SuperNodes online after {timeout:g} s; see "
                f"{Path(dep.folder) / 'logs'}"
            )
        # Each question is a flwr process of about a CPU-second, which the starting
        # SuperNodes need more.
        time.sleep(2.0)


@dataclass
class RunOutcome:
    """How a Flower run of a recipe ended."""

    run_id: int
    status: str
    log: Path

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


@dataclass
class RunHandle:
    """A submitted Flower run and the process streaming its log to a file."""

    run_id: int
    log: Path
    streamer: int


def start_run(
    folder: Path, recipe: Path, run_dir: Path, overrides: list[str] | None = None
) -> RunHandle:
    """Submit ``recipe`` as a Flower run writing ``run_dir``; returns at once.

    The ServerApp writes the run folder as ``fedgen run`` does (it must be a path
    the SuperLink's machine can write). A run folder with checkpoints is resumed.
    """
    folder = folder.resolve()
    LocalDeployment.load(folder)
    app = write_app(folder / "app")
    # A TOML file: flwr's inline key=value form cannot hold a quote inside a string.
    values = {
        "recipe": str(recipe.resolve()),
        "run-dir": str(run_dir.resolve()),
        "overrides": json.dumps(overrides or []),
    }
    run_config = folder / "run-config.toml"
    # A JSON string is a valid TOML basic string (same escapes).
    run_config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    answer = _flwr(folder, "run", str(app), CONNECTION, "--run-config", str(run_config))
    run_id = int(str(answer["run-id"]))
    log = folder / "logs" / f"run-{run_id}.log"
    streamer = _start(
        [_tool("flwr"), "log", str(run_id), CONNECTION, "--stream"], log, flower_env(folder)
    )
    return RunHandle(run_id, log, streamer)


#: Seconds between status questions while the run's log stream is open. Each question
#: is a ``flwr ls`` process (about a CPU-second to start); the stream's end is what
#: normally says the run is over, because the SuperLink closes it when the run finishes.
STATUS_EVERY = 10.0


def wait_run(folder: Path, handle: RunHandle, timeout: float | None = None) -> RunOutcome:
    """Wait for a run to finish (stopping it after ``timeout`` seconds)."""
    folder = folder.resolve()
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    next_question = start + STATUS_EVERY
    try:
        while True:
            streaming = _running(handle.streamer)
            now = time.monotonic()
            if not streaming or now >= next_question:
                status = run_status(folder, handle.run_id)
                if status.startswith("finished"):
                    return RunOutcome(handle.run_id, status, handle.log)
                # A stream that ended before its run (a lost connection) stops helping:
                # ask more often from then on.
                next_question = now + (STATUS_EVERY if streaming else 2.0)
            if deadline is not None and now > deadline:
                stop_run(folder, handle.run_id)
                return RunOutcome(handle.run_id, f"timed out after {timeout:g} s", handle.log)
            time.sleep(0.2 if streaming else 2.0)
    finally:
        kill_group(handle.streamer)


def _running(pid: int) -> bool:
    """Whether process ``pid`` (a child of this one, or not) still runs; reaps a child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:  # not this process's child: it can only be asked
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def stop_run(folder: Path, run_id: int) -> None:
    """Stop a run (its ServerApp ends; a later run on the same folder resumes it)."""
    _flwr(folder.resolve(), "stop", str(run_id), CONNECTION)


def run(
    folder: Path,
    recipe: Path,
    run_dir: Path,
    overrides: list[str] | None = None,
    *,
    timeout: float | None = None,
) -> RunOutcome:
    """Run ``recipe`` into ``run_dir`` on the deployment in ``folder``; wait for the end."""
    handle = start_run(folder, recipe, run_dir, overrides)
    return wait_run(folder, handle, timeout)


def run_status(folder: Path, run_id: int) -> str:
    """A Flower run's status, e.g. ``running`` or ``finished:completed``."""
    answer = _flwr(folder, "ls", CONNECTION, "--run-id", str(run_id))
    runs = answer.get("runs") or []
    assert isinstance(runs, list)
    return str(runs[0]["status"]) if runs else "unknown"


def kill_group(pgid: int, grace: float = 3.0) -> None:
    """SIGTERM a process group, then SIGKILL what is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        # A leader that is this process's child stays a zombie (still signalable) until
        # reaped: reap it, or the wait below would last the whole grace.
        _running(pgid)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def stop_supernode(dep: LocalDeployment, i: int, crash: bool = True) -> None:
    """Stop SuperNode ``i`` (and its ClientApp): with SIGKILL as a crash would (the
    SuperLink notices after two missed 30 s heartbeats), or politely (it signs off).
    A group whose id now names another process (see ``still_ours``) is left alone."""
    pgid = dep.supernodes[i]
    if not dep.still_ours(pgid):
        log.warning("process group %d is no longer SuperNode %d's (left alone)", pgid, i)
        return
    if crash:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    else:
        kill_group(pgid)


def restart_supernode(dep: LocalDeployment, i: int) -> None:
    """Start SuperNode ``i`` again (recorded, so ``down`` stops it too)."""
    dep.supernodes[i] = start_supernode(dep, i)
    dep.save()


def restart_nodes(dep: LocalDeployment, timeout: float = 120.0) -> None:
    """Restart every SuperNode (each keeps its key and state-dir); wait until all are online.

    Flower 1.41's SuperNode handles one message at a time and waits, without a time
    limit, for its ClientApp's reply before it pulls the next
    (``start_client_internal._push_messages``). A run stopped while a ClientApp held a
    message can leave that wait unanswered, and the node then serves no later run. So
    after stopping a run mid-round, restart the nodes before the next one.
    """
    for i in range(len(dep.supernodes)):
        stop_supernode(dep, i, crash=False)
        dep.supernodes[i] = start_supernode(dep, i)
    dep.save()
    wait_online(dep, len(dep.supernodes), timeout)


def down(folder: Path) -> None:
    """Stop every process of the deployment in ``folder``; keep its files."""
    folder = folder.resolve()
    dep = LocalDeployment.load(folder)
    for pgid in [*dep.supernodes, dep.superlink]:
        if pgid and dep.still_ours(pgid):
            kill_group(pgid)
        elif pgid:
            log.warning("process group %d is no longer this deployment's (left alone)", pgid)
    (folder / "deployment.json").unlink()
