"""fedgen's server side as a Flower ServerApp: fedgen's own loop, Flower's transport.

The ServerApp's main function reads three keys of the Flower run config:
``recipe`` (a path on the SuperLink's machine), ``run-dir`` (the run folder) and
``overrides`` (a JSON list of ``key=value`` recipe overrides). It runs
``run_experiment`` exactly as ``fedgen run`` does, with backend ``flower``
attached to the ServerApp's ``Grid``: the same strategies, transforms, privacy
accounting, ledger, checkpoints, evaluation and report. A run folder that already
holds checkpoints is resumed, so a ServerApp killed and started again on the same
run folder continues from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fedgen.config import load_config
from fedgen.engine.backends.flower import DeploymentError, FlowerBackend
from fedgen.engine.checkpoint import list_checkpoints
from fedgen.errors import ConfigError
from fedgen.experiment import Experiment, RecipeClientSide, run_experiment

log = logging.getLogger(__name__)


def serve(grid: Any, context: Any) -> None:
    """The ServerApp's main function: run the recipe over the connected SuperNodes."""
    config = context.run_config
    try:
        recipe = Path(str(config["recipe"]))
        run_dir = Path(str(config["run-dir"]))
        overrides = json.loads(str(config.get("overrides", "[]")))
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"the Flower run config needs recipe, run-dir and overrides (JSON list): {exc}"
        ) from exc
    # The recipe's own backend params belong to its simulation backend; the overrides
    # may set backend flower's (e.g. backend.params.client_timeout).
    cfg = load_config(recipe, ["backend.params={}", *overrides, "backend.name=flower"])
    resume = bool(list_checkpoints(run_dir / "checkpoints"))
    if resume:
        log.warning("%s holds checkpoints: resuming the run", run_dir)

    def attach(exp: Experiment) -> None:
        fed = exp.federation
        backend = fed.backend
        side = fed.client_side
        assert isinstance(backend, FlowerBackend) and isinstance(side, RecipeClientSide)
        if side.client_noise is not None:
            # A node calibrates its sigma from the recipe it is sent, which cannot say
            # each client's: it would train with other noise than the run accounts.
            raise DeploymentError(
                "the run's per-client DP-SGD sigmas (dpsgd.noise_per_client) were "
                "calibrated for the rounds it planned, and the recipe now plans others: "
                "resume with the federation.rounds the run started with (a run that keeps "
                f"a ledger records them in its run_start entry: fedgen ledger show {run_dir})"
            )
        backend.attach(grid)
        backend.hello(side.recipe, sorted(fed.clients), fed.audit, fed.deployment_run_id)

    run_experiment(cfg, run_dir, progress=False, resume=resume, on_ready=attach)
