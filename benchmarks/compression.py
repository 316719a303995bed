"""Compression benchmark: what each update codec saves in bytes and costs in quality.

For the conditional GAN and the conditional VAE on Fashion-MNIST (10 clients,
Dirichlet 0.5, FedAvg, the recipes ``configs/fmnist_cgan.yaml`` and
``configs/fmnist_cvae.yaml``), one run per codec setting, all with the same rounds:
float32 FedAvg (no codec), ``cast`` float16/bfloat16, ``quantize`` 8/4/2 bits,
``qsgd`` 4/2 bits, ``topk`` 10%/1% with error feedback, ``random_mask`` 10%, and 2-bit
``quantize`` replies with a compressed downlink (8/4/2-bit deltas). Bytes
are what the run's wire messages carried (``summary.json``'s ``bytes_up`` and
``bytes_total``), relative to float32 FedAvg's. The float32 run is evaluated every
``--baseline-every`` rounds, so each row also gives float32's quality at the bytes
that row spent in total ("at equal bytes": float32's last evaluation whose
cumulative bytes do not exceed the row's). One row per run is appended to
``benchmarks/results/compression.md`` as soon as it finishes.

    python benchmarks/compression.py [--tasks cgan cvae] [--settings float32 topk-0.01]
        [--set federation.rounds=10] [--out benchmarks/runs/compression]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fedgen.config import PREVIOUS_DEFAULT_EXPERIMENT, ExperimentConfig, load_config
from fedgen.experiment import run_experiment
from fedgen.report.results_table import ResultsTable

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = {"cgan": "fmnist_cgan.yaml", "cvae": "fmnist_cvae.yaml"}
#: setting -> the recipe's transforms (YAML flow text); float32 is plain FedAvg.
SETTINGS: dict[str, str] = {
    # In the order they run (the goal's candidates first, should the evening run out).
    "float32": "[]",
    "topk-0.01": "[{name: topk, params: {fraction: 0.01}}]",
    "quantize-2": "[{name: quantize, params: {bits: 2}}]",
    "quantize-2-b2048": "[{name: quantize, params: {bits: 2, bucket_size: 2048}}]",
    "quantize-1-b2048": "[{name: quantize, params: {bits: 1, bucket_size: 2048}}]",
    "quantize-8": "[{name: quantize, params: {bits: 8}}]",
    "random_mask-0.1": "[{name: random_mask, params: {fraction: 0.1}}]",
    "qsgd-2": "[{name: qsgd, params: {bits: 2}}]",
    "cast-float16": "[{name: cast, params: {dtype: float16}}]",
    "topk-0.1": "[{name: topk, params: {fraction: 0.1}}]",
    "quantize-4": "[{name: quantize, params: {bits: 4}}]",
    "qsgd-4": "[{name: qsgd, params: {bits: 4}}]",
    "cast-bfloat16": "[{name: cast, params: {dtype: bfloat16}}]",
    # A bit a value (scaled sign, error feedback), on all or a shared random support.
    "sign": "[{name: sign}]",
    "sign-0.5": "[{name: sign, params: {fraction: 0.5}}]",
    "sign-0.25": "[{name: sign, params: {fraction: 0.25}}]",
    # Each matrix as its best rank-r factors, every number in 8 bits, error feedback.
    "lowrank-1": "[{name: lowrank, params: {rank: 1}}]",
    "lowrank-2": "[{name: lowrank, params: {rank: 2}}]",
    "lowrank-4": "[{name: lowrank, params: {rank: 4}}]",
    "lowrank-4-b4": "[{name: lowrank, params: {rank: 4, bits: 4}}]",
    "lowrank-8-b2": "[{name: lowrank, params: {rank: 8, bits: 2}}]",
    "lowrank-6-b4": "[{name: lowrank, params: {rank: 6, bits: 4}}]",
    "lowrank-5-b4": "[{name: lowrank, params: {rank: 5, bits: 4}}]",
    "subspace-8": "[{name: subspace, params: {rank: 8, bits: 4}}]",
    "subspace-10": "[{name: subspace, params: {rank: 10, bits: 4}}]",
    "subspace-12": "[{name: subspace, params: {rank: 12, bits: 4}}]",
    "subspace-13": "[{name: subspace, params: {rank: 13, bits: 4}}]",
}
#: setting -> federation.downlink (the broadcast as compressed deltas); the rest send
#: the float32 model. Each pairs a reply codec (before the "+") with a downlink codec.
DOWNLINK: dict[str, str] = {
    "quantize-2+down-quantize-4": "{name: quantize, params: {bits: 4}}",
    "quantize-2+down-quantize-2": "{name: quantize, params: {bits: 2}}",
    "quantize-2+down-quantize-8": "{name: quantize, params: {bits: 8}}",
    # Scales per 2,048 values instead of 512: a quarter of the scales' bytes.
    "quantize-2+down-quantize-2-b2048": "{name: quantize, params: {bits: 2, bucket_size: 2048}}",
    "qsgd-2+down-quantize-2": "{name: quantize, params: {bits: 2}}",
    "quantize-2-b2048+down-quantize-2-b2048": (
        "{name: quantize, params: {bits: 2, bucket_size: 2048}}"
    ),
    # One bit a value both ways: each value its bucket's minimum or maximum, unbiased;
    # the server's error feedback carries what a delta leaves out to the next one.
    "quantize-1-b2048+down-quantize-1-b2048": (
        "{name: quantize, params: {bits: 1, bucket_size: 2048}}"
    ),
    "quantize-2-b2048+down-quantize-1-b2048": (
        "{name: quantize, params: {bits: 1, bucket_size: 2048}}"
    ),
    # Scaled signs both ways: contractive, so the server's error feedback converges where
    # the unbiased 1-bit code diverged; below a bit a value on a shared random support.
    "quantize-2-b2048+down-sign": "{name: sign, params: {error_feedback: false}}",
    "sign+down-sign": "{name: sign, params: {error_feedback: false}}",
    "sign-0.5+down-sign-0.5": "{name: sign, params: {fraction: 0.5, error_feedback: false}}",
    "sign-0.5+down-sign-0.25": "{name: sign, params: {fraction: 0.25, error_feedback: false}}",
    "sign-0.25+down-sign-0.25": "{name: sign, params: {fraction: 0.25, error_feedback: false}}",
    # Low-rank factors both ways: a projection, so contractive like the scaled sign.
    "lowrank-1+down-lowrank-1": "{name: lowrank, params: {rank: 1, error_feedback: false}}",
    "lowrank-2+down-lowrank-2": "{name: lowrank, params: {rank: 2, error_feedback: false}}",
    "lowrank-4+down-lowrank-4": "{name: lowrank, params: {rank: 4, error_feedback: false}}",
    "lowrank-2+down-lowrank-1": "{name: lowrank, params: {rank: 1, error_feedback: false}}",
    "lowrank-4+down-lowrank-2": "{name: lowrank, params: {rank: 2, error_feedback: false}}",
    # Rank 4 in 4 bits: about the bytes of rank 2 in 8 bits.
    "lowrank-4-b4+down-lowrank-4-b4": (
        "{name: lowrank, params: {rank: 4, bits: 4, error_feedback: false}}"
    ),
    # Rank 8 in ternary levels: about the bytes again, twice the directions.
    "lowrank-8-b2+down-lowrank-8-b2": (
        "{name: lowrank, params: {rank: 8, bits: 2, error_feedback: false}}"
    ),
    # Rank 6 in 4 bits: a round's update keeps 60-70% of its energy at rank 6 against
    # 50-62% at rank 4 (the cGAN's convolutions and projection), for about 1.4x the bytes.
    "lowrank-6-b4+down-lowrank-6-b4": (
        "{name: lowrank, params: {rank: 6, bits: 4, error_feedback: false}}"
    ),
    # More rank down than up, the bytes of rank 6 both ways: at full participation the
    # broadcast delta is the sum of every client's rank-r reply, far less low-rank than
    # any one reply, so a rank-r broadcast truncates more than a rank-r reply does.
    "lowrank-4-b4+down-lowrank-8-b4": (
        "{name: lowrank, params: {rank: 8, bits: 4, error_feedback: false}}"
    ),
    "lowrank-5-b4+down-lowrank-7-b4": (
        "{name: lowrank, params: {rank: 7, bits: 4, error_feedback: false}}"
    ),
    # Replies as coefficients in the basis the broadcast brings, one factor a message
    # (fedgen.transforms.subspace): about twice lowrank's rank for its bytes, and the
    # broadcast keeps the clients' mean whole.
    "subspace-8+down-subspace-8": "{name: subspace, params: {rank: 8, error_feedback: false}}",
    "subspace-10+down-subspace-10": "{name: subspace, params: {rank: 10, error_feedback: false}}",
    "subspace-12+down-subspace-12": "{name: subspace, params: {rank: 12, error_feedback: false}}",
    "subspace-13+down-subspace-13": "{name: subspace, params: {rank: 13, error_feedback: false}}",
    # For the generator-only rows below: with the discriminator private, its half of the
    # low-rank bytes (its 64 x 512 convolution and 10 x 3136 label embedding) is not sent,
    # so the generator can take twice the rank for rank 6's bytes both ways.
    "lowrank-12-b4+down-lowrank-12-b4": (
        "{name: lowrank, params: {rank: 12, bits: 4, error_feedback: false}}"
    ),
    "lowrank-16-b4+down-lowrank-16-b4": (
        "{name: lowrank, params: {rank: 16, bits: 4, error_feedback: false}}"
    ),
    # The generator at rank 6 and the discriminator value by value, both in 4 bits: which
    # network's low-rank code costs the cGAN its points (about 30x, not a goal candidate).
    "lowrank-6-b4-dvalues+down-lowrank-6-b4-dvalues": (
        "{name: lowrank, params: {rank: 6, bits: 4, ranks: {discriminator.: 0}, "
        "error_feedback: false}}"
    ),
    # The generator at rank 12 (it lost nothing measurable there) and the discriminator
    # at rank 2: about 49x fewer bytes than float32 both ways.
    "lowrank-12-b4-d2+down-lowrank-12-b4-d2": (
        "{name: lowrank, params: {rank: 12, bits: 4, ranks: {discriminator.: 2}, "
        "error_feedback: false}}"
    ),
    # The same with the generator's projection (3136 x 80, two thirds of an update's
    # energy) at rank 10: 46x became about 51x by the byte arithmetic (compression.md).
    "lowrank-12-b4-p10-d2+down-lowrank-12-b4-p10-d2": (
        "{name: lowrank, params: {rank: 12, bits: 4, ranks: {generator.project.: 10, "
        "discriminator.: 2}, error_feedback: false}}"
    ),
}
SETTINGS["lowrank-12-b4-p10-d2"] = (
    "[{name: lowrank, params: {rank: 12, bits: 4, ranks: {generator.project.: 10, "
    "discriminator.: 2}}}]"
)
SETTINGS["lowrank-12-b4-d2"] = (
    "[{name: lowrank, params: {rank: 12, bits: 4, ranks: {discriminator.: 2}}}]"
)
SETTINGS["lowrank-6-b4-dvalues"] = (
    "[{name: lowrank, params: {rank: 6, bits: 4, ranks: {discriminator.: 0}}}]"
)


def _per_network(generator_rank: int, discriminator_rank: int, bits: int, downlink: bool) -> str:
    """``lowrank`` with a rank per cGAN network (YAML flow text); the downlink's has no
    residual of its own (``fedgen.engine.downlink`` carries what it leaves out)."""
    feedback = ", error_feedback: false" if downlink else ""
    return (
        f"{{name: lowrank, params: {{rank: {generator_rank}, bits: {bits}, "
        f"ranks: {{discriminator.: {discriminator_rank}}}{feedback}}}}}"
    )


# Three bits a number (levels -3..3): 3/4 of the 4-bit bytes, which pay for the
# discriminator's rank, whose code decides the samples' diversity (compression.md,
# 2026-12-05). Generator rank, discriminator rank; each setting both ways.
for _g, _d in [(12, 2), (16, 2), (12, 4), (12, 6), (11, 6)]:
    _name = f"lowrank-{_g}-b3-d{_d}"
    SETTINGS[_name] = f"[{_per_network(_g, _d, 3, downlink=False)}]"
    DOWNLINK[f"{_name}+down-{_name}"] = _per_network(_g, _d, 3, downlink=True)
SETTINGS["lowrank-12-b4"] = "[{name: lowrank, params: {rank: 12, bits: 4}}]"
SETTINGS["lowrank-16-b4"] = "[{name: lowrank, params: {rank: 16, bits: 4}}]"
SETTINGS.update({name: SETTINGS[name.split("+")[0]] for name in DOWNLINK if name not in SETTINGS})
#: ``genonly-<setting>``: the setting with only the cGAN's generator federated; each
#: client keeps its own discriminator between rounds (private tensors), so neither the
#: replies nor the broadcast carry it. The float32 baseline stays fully federated.
GEN_ONLY = "genonly-"
GEN_ONLY_OVERRIDE = "task.params.federate=[generator]"
SETTINGS.update({GEN_ONLY + name: SETTINGS[name] for name in list(SETTINGS)})
DOWNLINK.update({GEN_ONLY + name: DOWNLINK[name] for name in list(DOWNLINK)})
#: float32 FedAvg stopped after half the rounds (its TSTR at about half the bytes).
HALF = "float32-half-rounds"
#: What every run shares: the in-process backend (the benchmark is pinned to one core),
#: 10 rounds and a 10,000-image TSTR set to fit an evening on one shared core.
COMMON = [
    "backend.name=inprocess",
    "federation.rounds=10",
    "eval.tstr_samples=10000",
]
COLUMNS = [
    "task",
    "codec",
    "rounds",
    "bytes_up",
    "bytes_total",
    "up_x_fewer",
    "total_x_fewer",
    "tstr_accuracy",
    "tstr_points_lost",
    "frechet_distance",
    "f32_tstr_at_equal_bytes",
    "f32_frechet_at_equal_bytes",
    "seconds",
]
NOTES = [
    "Fashion-MNIST, 10 clients, Dirichlet(0.5), FedAvg; RECIPES; in-process backend on "
    "one pinned core; every row the same rounds.",
    "bytes: the encoded lengths of the runs' wire messages (fedgen.wire); up = client "
    "replies, total = replies + jobs. Jobs carry the float32 global state, except in the "
    "+down-* rows (federation.downlink): there each job carries the compressed deltas "
    "since the model the client last received (the initial model, built from the recipe, "
    "included).",
    "x_fewer = float32's bytes / the row's; tstr_points_lost = 100 * (float32's final TSTR "
    "- the row's); f32_*_at_equal_bytes: the float32 run's quality at its last "
    "evaluation within the row's total bytes ('-' when it had none that early): Frechet "
    "distance from float32's evaluations every few rounds, TSTR (measured only after a run's "
    "last round) from float32 and float32-half-rounds.",
    "TSTR: a CNN trained on 10,000 synthetic images, tested on the real test split; "
    "Frechet distance on the features of a CNN trained on the real training split (not FID).",
    "goal (issue 15): >= 10x fewer bytes for <= 2 TSTR points, >= 50x for <= 5 points.",
    "genonly-* rows: only the cGAN's generator is federated (task.params.federate="
    "[generator]); each client keeps its own discriminator between rounds, and neither "
    "its replies nor its jobs carry one. Against float32 FedAvg of both networks.",
]


def recipe_note(task: str, cfg: ExperimentConfig) -> str:
    """How ``task``'s float32 row is configured: the note's RECIPES, per task."""
    params = cfg.strategy.params
    batch = cfg.task.params.get("batch_size", "the task's default batch")
    return (
        f"{task}: fraction {params.get('fraction', 1.0)}, EMA {params.get('ema_decay')}, "
        f"{cfg.federation.rounds} rounds of {cfg.federation.local_steps} local steps of {batch}"
    )


def _history(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def quality_by_bytes(run_dir: Path) -> list[tuple[int, float | None, float | None]]:
    """(cumulative total bytes, TSTR, Frechet distance) at each evaluated round of a run."""
    points, total = [], 0
    for m in _history(run_dir):
        total += m.get("bytes_up", 0) + m.get("bytes_down", 0)
        if "eval_seconds" in m:
            points.append((total, m.get("tstr_accuracy"), m.get("frechet_distance")))
    return points


def at_bytes(
    points: list[tuple[int, float | None, float | None]], budget: int
) -> tuple[float | None, float | None]:
    """The last evaluated (TSTR, Frechet) within ``budget`` cumulative bytes, or Nones."""
    within = [p for p in points if p[0] <= budget]
    return (within[-1][1], within[-1][2]) if within else (None, None)


def task_overrides(task: str, args: argparse.Namespace) -> list[str]:
    """The overrides every row of ``task`` shares; ``--set`` comes last and wins."""
    # The cGAN as this table's earlier rows (and its reused baselines) ran it.
    pinned = PREVIOUS_DEFAULT_EXPERIMENT if task == "cgan" else []
    return [*pinned, *COMMON, *args.overrides]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument("--baseline-every", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs/compression"))
    parser.add_argument("--table", type=Path, default=Path("benchmarks/results/compression.md"))
    parser.add_argument(
        "--baselines-from",
        type=Path,
        help="an earlier --out folder whose float32 runs (same commit's code, same recipe) "
        "serve as this run's baselines instead of running them again (runs are "
        "deterministic on one thread)",
    )
    parser.add_argument(
        "--skip-half",
        action="store_true",
        help="run float32 only for the full rounds (no equal-bytes point at half of them)",
    )
    args = parser.parse_args()

    table = ResultsTable(args.table, COLUMNS)
    recipes = "; ".join(
        recipe_note(task, load_config(CONFIGS / RECIPES[task], task_overrides(task, args)))
        for task in args.tasks
    )
    table.start("compression", [NOTES[0].replace("RECIPES", recipes), *NOTES[1:]])
    baselines: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[tuple[int, float | None, float | None]]] = {}
    tstr_curves: dict[str, list[tuple[int, float | None]]] = {task: [] for task in args.tasks}
    # float32 first: every other row is measured against it. TSTR is measured only after
    # a run's last round, so float32 also runs for half the rounds: its TSTR at about the
    # bytes of the rows that compress the uplink most. Then each setting for every task
    # in turn, so a benchmark stopped early has both tasks' rows for the first settings.
    settings = ["float32"] + ([] if args.skip_half else [HALF])
    settings += [s for s in args.settings if s != "float32"]
    if any(s.startswith(GEN_ONLY) for s in settings) and args.tasks != ["cgan"]:
        parser.error(f"{GEN_ONLY}* settings keep a GAN's discriminator private: use --tasks cgan")
    for setting in settings:
        for task in args.tasks:
            every = args.baseline_every if setting == "float32" else 0
            overrides = [
                f"name=compression-{task}-{setting}",
                f"transforms={SETTINGS.get(setting, '[]')}",
                f"federation.downlink={DOWNLINK.get(setting, 'null')}",
                f"eval.every={every}",
                *task_overrides(task, args),
                *([GEN_ONLY_OVERRIDE] if setting.startswith(GEN_ONLY) else []),
            ]
            if setting == HALF:
                overrides.append(f"federation.rounds={max(1, baselines[task]['rounds'] // 2)}")
            cfg = load_config(CONFIGS / RECIPES[task], overrides)
            run_dir = args.out / cfg.name
            if args.baselines_from is not None and setting in ("float32", HALF):
                # Reused, not re-run: its figures enter the comparison, no row is written.
                run_dir = args.baselines_from / cfg.name
                summary = json.loads((run_dir / "summary.json").read_text())
                if setting == "float32":
                    baselines[task], curves[task] = summary, quality_by_bytes(run_dir)
                tstr_curves[task].append((summary["bytes_total"], summary.get("tstr_accuracy")))
                tstr_curves[task].sort(key=lambda p: p[0])
                continue
            t0 = time.perf_counter()
            summary = run_experiment(cfg, run_dir, progress=False)
            seconds = time.perf_counter() - t0
            if setting == "float32":
                baselines[task], curves[task] = summary, quality_by_bytes(run_dir)
            if setting in ("float32", HALF):
                tstr_curves[task].append((summary["bytes_total"], summary.get("tstr_accuracy")))
                tstr_curves[task].sort(key=lambda p: p[0])
            baseline = baselines[task]
            tstr, f32_tstr = summary.get("tstr_accuracy"), baseline.get("tstr_accuracy")
            _, eq_fd = at_bytes(curves[task], summary["bytes_total"])
            within = [t for b, t in tstr_curves[task] if b <= summary["bytes_total"]]
            row = {
                "task": task,
                "codec": setting,
                "rounds": summary["rounds"],
                "bytes_up": summary["bytes_up"],
                "bytes_total": summary["bytes_total"],
                "up_x_fewer": baseline["bytes_up"] / summary["bytes_up"],
                "total_x_fewer": baseline["bytes_total"] / summary["bytes_total"],
                "tstr_accuracy": tstr,
                "tstr_points_lost": None if tstr is None else 100 * (f32_tstr - tstr),
                "frechet_distance": summary.get("frechet_distance"),
                "f32_tstr_at_equal_bytes": within[-1] if within else None,
                "f32_frechet_at_equal_bytes": eq_fd,
                "seconds": seconds,
            }
            table.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
