"""fedgen: federated training of generative models whose data never leaves its owners.

Python in a few lines::

    from fedgen import load_config, run_experiment
    cfg = load_config("configs/fmnist_cgan.yaml", ["federation.rounds=5"])
    summary = run_experiment(cfg, "runs/quick")
    print(summary["tstr_accuracy"])
"""

from pathlib import Path
from typing import Any

from fedgen.config import ExperimentConfig, load_config
from fedgen.version import __version__


def run_experiment(
    cfg: ExperimentConfig, out: str | Path, *, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Train ``cfg`` into run folder ``out``; see ``fedgen.experiment.run_experiment``."""
    from fedgen.experiment import run_experiment as _run

    return _run(cfg, out, progress=progress, resume=resume)


__all__ = ["ExperimentConfig", "__version__", "load_config", "run_experiment"]
