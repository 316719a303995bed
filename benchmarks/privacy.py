"""Privacy benchmark: what DP costs in quality and what it buys against measured attacks.

For the conditional GAN on MNIST and Fashion-MNIST (10 clients, Dirichlet 0.5,
the default budget), one run per privacy setting: none (epsilon = inf),
client-level DP-FedAvg at epsilon 10, 3 and 1 (delta 1e-5, recipe
``configs/mnist_cgan_dp.yaml``), and sample-level DP-SGD at epsilon 10
(``configs/mnist_cgan_dpsgd.yaml``). After each run it attacks the trained
model (membership inference: LOGAN and GAN-Leaks; gradient inversion of one
client's update) and appends one row to ``benchmarks/results/privacy.md``.

    .venv/bin/python benchmarks/privacy.py [--data mnist] [--settings none client-10]
        [--set federation.rounds=30] [--out benchmarks/runs/privacy]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedgen.attacks import run_attack
from fedgen.config import ExperimentConfig, load_config, validate_components_of
from fedgen.engine.checkpoint import list_checkpoints
from fedgen.experiment import run_experiment
from fedgen.report.results_table import ResultsTable

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# setting -> (recipe, target epsilon); None: the default experiment without DP.
SETTINGS: dict[str, tuple[str | None, float | None]] = {
    "none": (None, None),
    "client-10": ("mnist_cgan_dp.yaml", 10.0),
    "client-3": ("mnist_cgan_dp.yaml", 3.0),
    "client-1": ("mnist_cgan_dp.yaml", 1.0),
    "dpsgd-10": ("mnist_cgan_dpsgd.yaml", 10.0),
    # Client-level DP at a scale it is designed for: 1,000 clients, ~100 per round.
    "client-10-n1000": ("mnist_cgan_dp_1000.yaml", 10.0),
    # The same 1,000-client federation without noise (clip-n1000: clipped, no noise;
    # none-n1000: neither; both keep its unweighted fixed-denominator mean and its
    # Poisson sampling): what the noise costs there, and what the clipping costs.
    "clip-n1000": ("mnist_cgan_dp_1000.yaml", None),
    "none-n1000": ("mnist_cgan_dp_1000.yaml", None),
}
# setting -> transforms of its recipe it runs without.
WITHOUT: dict[str, tuple[str, ...]] = {
    "clip-n1000": ("client_dp",),
    "none-n1000": ("clip", "client_dp"),
}
CLIENT_LEVEL = {"mnist_cgan_dp.yaml", "mnist_cgan_dp_1000.yaml"}
COLUMNS = [
    "data",
    "privacy",
    "epsilon",
    "delta",
    "tstr_accuracy",
    "frechet_distance",
    "logan_auc",
    "elbo_auc",
    "ganleaks_auc",
    "inversion_psnr_none",
    "inversion_psnr_dp",
    "inversion_psnr_secure_sum",
    "secure_sum_target_cosine",
    "seconds",
    "attack_seconds",
]
NOTES = [
    "`clip-n1000` runs `client-10-n1000`'s recipe without noise, `none-n1000` without "
    "clipping or noise; TSTR: a CNN trained on the recipe's synthetic images, tested on "
    "the real test split; Frechet distance on the features of a CNN trained on the real "
    "training split (not FID).",
    "membership: 1000 members (clients' training images) vs 1000 held-out test images; LOGAN = "
    "the logit of the global discriminator as trained (white-box, cGAN), ELBO = the cVAE's "
    "evidence lower bound (white-box, cVAE), GAN-Leaks = distance to the closest of 1000 synthetic "
    "images per class (black-box); AUC 0.5 is chance.",
    "inversion: Inverting Gradients on client 0's discriminator gradient for a batch of 2 "
    "(labels known), PSNR in dB after the best match: `none` as sent, `dp` clipped to 1 with "
    "noise std z (a client-level row's noise multiplier; 1 for the other rows, DP-SGD's "
    "included), `secure_sum` the sum of 4 clients' gradients; secure_sum_target_cosine: "
    "cosine between client 0's gradient and that sum (near 1: client 0 dominates it and "
    "the sum hides little).",
    "anchors (centralised DP-SGD, MNIST, eps=10): 'Private GANs, Revisited' (Bie et al. 2023) "
    "downstream accuracy 95.0%; GS-WGAN (Chen et al. 2020) about 80%.",
]


def setting_config(setting: str, data: str, extra: list[str]) -> ExperimentConfig:
    """The config a setting runs on ``data``, with the command's overrides applied."""
    recipe, epsilon = SETTINGS[setting]
    overrides = [f"data.sources=[{data}]", f"name=privacy-{data}-{setting}"]
    if recipe == "mnist_cgan_dpsgd.yaml":
        overrides.append(f"dpsgd.epsilon={epsilon}")
    cfg = load_config(None if recipe is None else CONFIGS / recipe, [*overrides, *extra])
    if setting in WITHOUT:
        cfg.transforms = [t for t in cfg.transforms if t.name not in WITHOUT[setting]]
        validate_components_of(cfg)
    elif recipe in CLIENT_LEVEL:
        # Overrides cannot index the transforms list: set the DP target here.
        (dp,) = [t for t in cfg.transforms if t.name == "client_dp"]
        dp.params["epsilon"] = epsilon
        validate_components_of(cfg)
    return cfg


def recipe_notes(settings: list[str], data: list[str], extra: list[str]) -> list[str]:
    """One note per setting, written from the config it runs (not from memory)."""
    notes = []
    for setting in settings:
        cfg = setting_config(setting, data[0] if data else "mnist", extra)
        part = cfg.data.partition
        fed = cfg.federation
        steps = (
            f"{fed.local_steps} local steps" if fed.local_steps else f"{fed.local_epochs} epochs"
        )
        transforms = ", ".join(f"{t.name} {t.params}" for t in cfg.transforms) or "none"
        dpsgd = f"; DP-SGD {cfg.dpsgd.model_dump()}" if cfg.dpsgd is not None else ""
        notes.append(
            f"`{setting}`: {cfg.task.name} {cfg.task.params}, {cfg.data.num_clients} clients "
            f"({part.kind} {part.params}), {cfg.strategy.name} {cfg.strategy.params}, "
            f"{fed.rounds} rounds x {steps}; transforms: {transforms}{dpsgd}"
        )
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", default=["mnist", "fashion-mnist"])
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs/privacy"))
    parser.add_argument("--table", type=Path, default=Path("benchmarks/results/privacy.md"))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each setting's run folder from its newest checkpoint (a run longer "
        "than one session); 'seconds' then counts the resumed part only",
    )
    args = parser.parse_args()

    table = ResultsTable(args.table, COLUMNS)
    table.start("privacy", [*recipe_notes(args.settings, args.data, args.overrides), *NOTES])
    for data in args.data:
        for setting in args.settings:
            cfg = setting_config(setting, data, args.overrides)
            run_dir = args.out / cfg.name
            t0 = time.perf_counter()
            resume = args.resume and bool(list_checkpoints(run_dir / "checkpoints"))
            summary = run_experiment(cfg, run_dir, progress=False, resume=resume)
            seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            membership = run_attack(run_dir, "membership")
            z = float(summary.get("noise_multiplier") or 1.0)
            inversion = run_attack(run_dir, "inversion", noise_multiplier=z)
            row = {
                "data": data,
                "privacy": setting,
                "epsilon": summary.get("epsilon", float("inf")),
                "delta": summary.get("delta"),
                "tstr_accuracy": summary.get("tstr_accuracy"),
                "frechet_distance": summary.get("frechet_distance"),
                "logan_auc": membership.get("logan_auc"),
                "elbo_auc": membership.get("elbo_auc"),
                "ganleaks_auc": membership.get("ganleaks_auc"),
                "inversion_psnr_none": inversion.get("psnr_none"),
                "inversion_psnr_dp": inversion.get("psnr_dp"),
                "inversion_psnr_secure_sum": inversion.get("psnr_secure_sum"),
                "secure_sum_target_cosine": inversion.get("secure_sum_target_cosine"),
                "seconds": seconds,
                "attack_seconds": time.perf_counter() - t0,
            }
            table.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
