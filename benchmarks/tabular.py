"""Tabular benchmark: federated table synthesis against its centralized ceiling and the
``ctgan`` library, on real tables, at equal training steps.

For each table (``fair``, ``randhie``) and synthesizer (``tvae``, ``ctgan``), each row one
method, appended to ``benchmarks/results/tabular.md`` as its run ends:

- ``centralized``: fedgen, one client holding every training row, as many steps per round
  as the whole cohort takes;
- ``silos``: fedgen, FedAvg over clients that are the values of the table's silo column;
- ``dirichlet``: fedgen, FedAvg over clients with Dirichlet(alpha) skew of the target;
- ``library``: the ``ctgan`` library's own TVAE / CTGAN on the pooled training rows, for
  the epochs that give the same number of batches (its defaults otherwise);
- ``silos-fedsgd`` / ``dirichlet-fedsgd``: the same clients, each round one SGD step per
  client (``task.params.local_optimizer: sgd``) and the server's Adam (strategy
  ``fedadam``, the synthesizer's own lr and betas) on their weighted mean: centralized
  Adam on a batch stratified by client (FedSGD with a server optimizer, Reddi et al.
  2021), rounds x local steps rounds, so as many rows are read as by the others.

Synthesizers ``tvae-target`` and ``ctgan-target`` are the TVAE and CTGAN recipes
conditioned on the table's target column (``task.params.condition_on``: TVAE's decoder
reads its one-hot, CTGAN's conditional vectors name it alone), for every method but
``library``; ``tvae-silo`` and ``ctgan-silo`` condition on the table's silo column
instead (the column a silo federation's clients differ by), and ``tvae-joint`` on both,
drawn jointly from their pooled joint counts; each against its own centralized row.

Synthesizers ``vertical`` (``configs/tabular_<table>_vertical.yaml``, the GTV-style
column-split CTGAN) and ``vertical_tvae`` (``configs/tabular_<table>_vertical_tvae.yaml``,
TVAE split the same way) run the ``vertical-*`` methods instead: ``vertical-1`` is one client
holding every column (CTGAN's or TVAE's architecture, trained through the same wire: the
centralized reference its rows are divided by), ``vertical-2`` / ``vertical-4`` split
the columns evenly, ``-imbalanced`` gives one client most columns and the others one
each (``VERTICAL_SPLITS``). They run as many joint iterations as the horizontal
centralized run of the table takes steps, with the same batch.

Every method is evaluated by the same ``TableEvaluator`` (sdmetrics quality report,
TSTR macro F1, Gower DCR against the holdout). Bytes are the round loop's encoded
messages (up + down) plus, for fedgen, the encoder statistics every client sent once.

With ``--personalize-steps N`` the silos and Dirichlet runs also report, on a row of
their own (``<method>+finetune-N``), the union of every client's rows drawn from its own
model: the final global model fine-tuned N local steps on the client's rows, sampling its
share (by row count) with its own category counts (``eval.per_client``,
``fedgen.engine.table_union``).

With ``--folds K`` every method runs K times, each holding out one of K folds of the
rows (``data.partition.params.holdout_fold``: k-fold cross-validation, every row tested
once), each fold's row against that fold's centralized run, then one row per method with
the figures' means over the folds: a small table's 60-row holdout moves TSTR by
several points from one split to the next, and the folds' mean tells that from a loss.

    .venv/bin/python benchmarks/tabular.py [--tables fair randhie] [--synths tvae ctgan]
        [--rounds 30] [--local-steps N (default: each recipe's)] [--folds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from fedgen.config import load_config
from fedgen.data.table_data import SiloPartition, TableDirichletPartition
from fedgen.data.table_sources import get_table_source
from fedgen.eval.table_quality import TableEvaluator
from fedgen.experiment import run_experiment
from fedgen.registry import TASKS
from fedgen.report.results_table import ResultsTable, current_commit
from fedgen.seeding import derive_seed

ROOT = Path(__file__).resolve().parents[1]
#: Suffixes of synthesizers whose recipes are conditioned on the table's columns.
CONDITIONED = ("-target", "-silo", "-joint")
COLUMNS = [
    "commit",
    "table",
    "synthesizer",
    "method",
    "clients",
    "steps",
    "quality",
    "column shapes",
    "pair trends",
    "quality / centralized",
    "TSTR F1",
    "TSTR F1 std",
    "TRTR F1",
    "TSTR / centralized",
    "DCR synth-train",
    "DCR holdout-train",
    "closer to train",
    "model bytes",
    "encoder bytes",
    "seconds",
]
HORIZONTAL = ("centralized", "silos", "dirichlet", "library", "silos-fedsgd", "dirichlet-fedsgd")
#: The client's SGD learning rate of the ``-fedsgd`` methods: its step is the server
#: Adam's gradient, and Adam does not see its scale (tau scales with it). TVAE's one step
#: is the gradient itself; CTGAN's generator step follows its critic's in the same
#: local step, so that critic step is kept small.
FEDSGD_CLIENT_LR = {"tvae": 1.0, "ctgan": 1e-3}
VERTICAL = (
    "vertical-1",
    "vertical-2",
    "vertical-2-imbalanced",
    "vertical-4",
    "vertical-4-imbalanced",
)
METHODS = HORIZONTAL + VERTICAL
#: Column groups of each vertical method, per table (every column in one group).
VERTICAL_SPLITS: dict[str, dict[str, list[list[str]]]] = {
    "fair": {
        "vertical-2": [
            ["rate_marriage", "age", "yrs_married", "children"],
            ["religious", "educ", "occupation", "occupation_husb", "had_affair"],
        ],
        "vertical-2-imbalanced": [
            [
                *("rate_marriage", "age", "yrs_married", "children", "religious", "educ"),
                *("occupation", "occupation_husb"),
            ],
            ["had_affair"],
        ],
        "vertical-4": [
            ["rate_marriage", "age"],
            ["yrs_married", "children"],
            ["religious", "educ"],
            ["occupation", "occupation_husb", "had_affair"],
        ],
        "vertical-4-imbalanced": [
            ["rate_marriage", "age", "yrs_married", "children", "religious", "educ"],
            ["occupation"],
            ["occupation_husb"],
            ["had_affair"],
        ],
    },
    "randhie": {
        "vertical-2": [["mdvis", "coins", "idp", "lpi"], ["fmde", "physlm", "disea", "health"]],
        "vertical-2-imbalanced": [
            ["mdvis", "coins", "idp", "lpi", "fmde", "physlm", "disea"],
            ["health"],
        ],
        "vertical-4": [["mdvis", "coins"], ["idp", "lpi"], ["fmde", "physlm"], ["disea", "health"]],
        "vertical-4-imbalanced": [
            ["mdvis", "coins", "idp", "lpi", "fmde"],
            ["physlm"],
            ["disea"],
            ["health"],
        ],
    },
}
FIGURES = (
    "quality_score",
    "column_shapes",
    "column_pair_trends",
    "ml_efficacy",
    "ml_efficacy_real",
    "dcr_synthetic_train",
    "dcr_holdout_train",
    "dcr_closer_to_train",
)


def fold_sets(fold: int | None, folds: int | None) -> list[str]:
    """The overrides that hold out fold ``fold`` of ``folds`` (none without folds)."""
    if fold is None or folds is None:
        return []
    return [
        f"data.partition.params.holdout_fraction={1 / folds}",
        f"data.partition.params.holdout_fold={fold}",
    ]


def run_dir(work: Path, table: str, synth: str, method: str, fold: int | None) -> Path:
    """A run's folder: the names asked for (tvae-target is not tvae), and its fold."""
    return work / f"{table}-{synth}-{method}{'' if fold is None else f'-fold{fold}'}"


def fedgen_method(
    table: str,
    synth: str,
    method: str,
    sets: list[str],
    work: Path,
    alpha: float,
    fold: int | None = None,
    folds: int | None = None,
    personalize_steps: int = 0,
) -> dict[str, Any]:
    """One fedgen run of ``configs/tabular_<table>_<synth>.yaml``; its figures (under
    ``union``, the union of the clients' fine-tuned models' figures when asked)."""
    extra = ["eval.every=0"]
    union = personalize_steps > 0 and method in ("silos", "dirichlet")
    if union:
        extra += ["eval.per_client=true", f"eval.personalize_steps={personalize_steps}"]
    if method == "centralized":
        extra.append("federation.centralized=true")
    elif method.startswith("dirichlet"):
        extra.append(f"data.partition={{kind: table_dirichlet, params: {{alpha: {alpha}}}}}")
    if method.endswith("-fedsgd"):
        extra.extend(fedsgd_sets(table, synth, sets))
    extra.extend(fold_sets(fold, folds))
    out = run_dir(work, table, synth, method, fold)
    if synth.endswith(CONDITIONED):
        source = get_table_source(table)
        suffix = synth.rsplit("-", 1)[1]
        column = {
            "target": source.target,
            "silo": source.silo_column,
            "joint": f"[{source.silo_column}, {source.target}]",
        }[suffix]
        synth = synth.rsplit("-", 1)[0]
        extra.append(f"task.params.condition_on={column}")
    cfg = load_config(ROOT / f"configs/tabular_{table}_{synth}.yaml", [*sets, *extra])
    t0 = time.perf_counter()
    summary = run_experiment(cfg, out, progress=False)
    seconds = time.perf_counter() - t0
    partition = json.loads((out / "partition.json").read_text())
    clients = cfg.data.num_clients
    steps = cfg.federation.rounds * (cfg.federation.local_steps or 0) * clients
    figures = {
        **{k: summary[k] for k in FIGURES},
        "ml_efficacy_std": summary.get("ml_efficacy_std"),
        "clients": 1 if method == "centralized" else clients,
        "steps": steps,
        "model_bytes": summary["bytes_up"] + summary["bytes_down"],
        "encoder_bytes": sum(partition["encoder"]["client_bytes"]),
        "seconds": seconds,
        "batch_size": cfg.task.params.get("batch_size", 500),
    }
    if union:
        own = {k: summary[f"{k}_union_finetuned"] for k in (*FIGURES, "ml_efficacy_std")}
        # The fine-tuning steps count with the run's; the same bytes (none are sent).
        figures["union"] = {**figures, **own, "steps": steps + personalize_steps * clients}
    return figures


def fedsgd_sets(table: str, synth: str, sets: list[str]) -> list[str]:
    """The overrides of a ``-fedsgd`` method: one client SGD step a round, server Adam."""
    base = synth.split("-")[0]
    cfg = load_config(ROOT / f"configs/tabular_{table}_{base}.yaml", sets)
    task_cls: Any = TASKS.get(cfg.task.name)
    params = task_cls.Params(**cfg.task.params)
    beta1, beta2 = getattr(params, "betas", (0.9, 0.999))  # TVAE: torch.optim.Adam's
    client_lr = FEDSGD_CLIENT_LR[base]
    strategy = (
        f"{{name: fedadam, params: {{fraction: 1.0, min_clients: 1, server_lr: {params.lr}, "
        f"beta1: {beta1}, beta2: {beta2}, tau: {1e-8 * client_lr}}}}}"
    )
    rounds = cfg.federation.rounds * (cfg.federation.local_steps or 1)
    return [
        f"federation.rounds={rounds}",
        "federation.local_steps=1",
        "task.params.local_optimizer=sgd",
        f"task.params.lr={client_lr}",
        f"strategy={strategy}",
    ]


def vertical_method(
    table: str,
    synth: str,
    method: str,
    sets: list[str],
    work: Path,
    steps_per_round: int,
    fold: int | None = None,
    folds: int | None = None,
) -> dict[str, Any]:
    """One run of ``configs/tabular_<table>_<synth>.yaml`` (``synth``: ``vertical`` or
    ``vertical_tvae``) with ``method``'s column groups."""
    recipe = ROOT / f"configs/tabular_{table}_{synth}.yaml"
    if method == "vertical-1":
        schema_cfg = load_config(recipe, [])
        groups = [[c for g in schema_cfg.data.partition.params["columns"] for c in g]]
    else:
        groups = VERTICAL_SPLITS[table][method]
    extra = [
        "eval.every=0",
        f"data.num_clients={len(groups)}",
        f"data.partition.params.columns={json.dumps(groups)}",
        f"federation.local_steps={steps_per_round}",
        *fold_sets(fold, folds),
    ]
    cfg = load_config(recipe, [*sets, *extra])
    out = run_dir(work, table, synth, method, fold)
    t0 = time.perf_counter()
    summary = run_experiment(cfg, out, progress=False)
    seconds = time.perf_counter() - t0
    return {
        **{k: summary[k] for k in FIGURES},
        "ml_efficacy_std": summary.get("ml_efficacy_std"),
        "clients": len(groups),
        "steps": cfg.federation.rounds * steps_per_round,
        # Sent plus received by the clients: the record ids they send one another count
        # at both ends (a few hundred bytes per iteration against megabytes).
        "model_bytes": summary["bytes_up"] + summary["bytes_down"],
        "encoder_bytes": 0,  # each client fits its own columns' encoder
        "seconds": seconds,
    }


def library_method(
    table: str,
    synth: str,
    steps: int,
    batch: int,
    seed: int,
    fold: int | None = None,
    folds: int | None = None,
) -> dict[str, Any]:
    """The ``ctgan`` library's synthesizer on the pooled training rows of the same split."""
    import ctgan

    # One client: only for the rows and the holdout (the same split either way); a table
    # without a silo column (breast_cancer) is refused by the silo partition.
    fraction = 1 / folds if folds else 0.2
    partition = (
        SiloPartition(max_modes=1, holdout_fraction=fraction, holdout_fold=fold)
        if get_table_source(table).silo_column is not None
        else TableDirichletPartition(max_modes=1, holdout_fraction=fraction, holdout_fold=fold)
    )
    fed = partition.federate(table, 1, seed)
    train = fed.train
    epochs = max(1, round(steps * batch / len(train)))
    cls = ctgan.TVAE if synth == "tvae" else ctgan.CTGAN
    model = cls(epochs=epochs, batch_size=batch, enable_gpu=False)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train, discrete_columns=fed.schema.categorical())
    # The evaluator's seed as a fedgen run of the same root seed derives it.
    eval_seed = derive_seed(seed, "eval") % (2**31)
    evaluator = TableEvaluator(train, fed.holdout, fed.schema, fed.target, eval_seed)
    synthetic = _library_rows(model, evaluator.quality_rows, fed.schema)
    tstr = _library_rows(model, evaluator.tstr_rows, fed.schema)
    figures = evaluator.evaluate_table(synthetic, final=True, tstr_synthetic=tstr)
    return {
        **figures,
        "clients": 1,
        "steps": epochs * -(-len(train) // batch),
        "model_bytes": None,
        "encoder_bytes": None,
        "seconds": time.perf_counter() - t0,
    }


def _library_rows(model: Any, n: int, schema: Any) -> Any:
    """``n`` rows of a ctgan-library model, integer columns rounded: the library is given
    them as floats (the schema check types numbers as float64), so it does not round."""
    rows = model.sample(n)
    for column in schema.columns:
        if column.type == "integer":
            rows[column.name] = rows[column.name].round()
    return schema.check(rows, "library rows")


def library_steps(table: str, synth: str, sets: list[str]) -> tuple[int, int, int]:
    """Batches, batch size and root seed of the fedgen centralized run this library run
    matches."""
    cfg = load_config(ROOT / f"configs/tabular_{table}_{synth}.yaml", sets)
    steps = cfg.federation.rounds * (cfg.federation.local_steps or 0) * cfg.data.num_clients
    return steps, int(cfg.task.params.get("batch_size", 500)), cfg.seed


def mean_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The folds' runs as one: each figure's mean (None where a fold has none), and TSTR
    F1's standard deviation over the folds in place of the one over synthetic draws."""
    keys = set().union(*runs)
    mean: dict[str, Any] = {}
    for key in keys:
        values = [r.get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        mean[key] = sum(numbers) / len(numbers) if len(numbers) == len(values) else None
    tstr = [float(r["ml_efficacy"]) for r in runs]
    mean["ml_efficacy_std"] = statistics.stdev(tstr) if len(tstr) > 1 else None
    return mean


def table_row(
    commit: str,
    name: str,
    synth: str,
    label: str,
    r: dict[str, Any],
    central: dict[str, Any] | None,
) -> dict[str, Any]:
    """One row of the results table: ``r``'s figures, and its shares of ``central``'s."""
    return {
        "commit": commit,
        "table": name,
        "synthesizer": synth,
        "method": label,
        "clients": r["clients"],
        "steps": r["steps"],
        "quality": r["quality_score"],
        "column shapes": r["column_shapes"],
        "pair trends": r["column_pair_trends"],
        "quality / centralized": (
            r["quality_score"] / central["quality_score"] if central else None
        ),
        "TSTR F1": r["ml_efficacy"],
        "TSTR F1 std": r.get("ml_efficacy_std"),
        "TRTR F1": r["ml_efficacy_real"],
        "TSTR / centralized": (r["ml_efficacy"] / central["ml_efficacy"] if central else None),
        "DCR synth-train": r["dcr_synthetic_train"],
        "DCR holdout-train": r["dcr_holdout_train"],
        "closer to train": r["dcr_closer_to_train"],
        "model bytes": r["model_bytes"],
        "encoder bytes": r["encoder_bytes"],
        "seconds": r["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", default=["fair", "randhie"])
    parser.add_argument("--synths", nargs="+", default=["tvae", "ctgan"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--local-steps",
        type=int,
        default=None,
        help="local steps per client and round (default: each recipe's own; the vertical "
        "methods' iterations count 10 a client)",
    )
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument(
        "--tstr-repeats",
        type=int,
        default=1,
        help="synthetic draws TSTR is measured on per run (eval.tstr_repeats)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        help="cross-validate: run every method once per fold of K (holdout fraction 1/K), "
        "then write the folds' mean per method",
    )
    parser.add_argument(
        "--personalize-steps",
        type=int,
        default=0,
        help="also report the silos and Dirichlet runs' union of clients' rows, each from "
        "the global model fine-tuned this many steps on its own rows",
    )
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tabular.md")
    args = parser.parse_args()

    sets = [
        f"federation.rounds={args.rounds}",
        # Each recipe's own local steps unless asked: fair and randhie's CTGAN take 100
        # steps of 50 rows where the others take 10 larger ones.
        *([f"federation.local_steps={args.local_steps}"] if args.local_steps else []),
        "threads=1",
        f"eval.tstr_repeats={args.tstr_repeats}",
        *args.sets,
    ]
    steps_told = args.local_steps or "the recipe's"
    table = ResultsTable(args.out, COLUMNS)
    table.start(
        "Federated table synthesis",
        notes=[
            f"fedgen: recipes configs/tabular_<table>_<synthesizer>.yaml, {args.rounds} rounds "
            f"x {steps_told} local steps per client, FedAvg over every client each round; "
            "centralized: one client with every training row and the cohort's steps per round; "
            "-fedsgd methods: one client SGD step a round and server Adam (fedadam, the "
            "synthesizer's lr and betas), rounds x local steps rounds",
            "silos: clients are the values of the silo column (fair: occupation, 6 values to "
            "4 clients; randhie: coinsurance plan, 5 clients); dirichlet: Dirichlet("
            f"{args.alpha}) skew of the target over as many clients",
            "library: ctgan 0.12.1's TVAE / CTGAN (its defaults, BatchNorm included) on the "
            "pooled training rows for the epochs that give about as many batches",
            "quality: sdmetrics QualityReport (mean of column shapes and pair trends), 2,000 "
            "synthetic rows against as many real training rows",
            "TSTR F1: macro F1 on the 20% real holdout of sklearn's HistGradientBoosting "
            "trained on synthetic rows (as many as training rows); TRTR: trained on the real rows; "
            f"fedgen rows: the mean over {args.tstr_repeats} synthetic draws of the same "
            "model, and their sample standard deviation (TSTR F1 std)",
            *(
                [
                    f"{args.folds}-fold cross-validation: each method once per fold of "
                    f"{args.folds} held out (holdout fraction 1/{args.folds}), each fold's "
                    "row against that fold's centralized run; the 'K-fold mean' rows: "
                    "every figure's mean over the folds, ratios of those means, and TSTR F1 "
                    "std over the folds (not over synthetic draws)"
                ]
                if args.folds
                else []
            ),
            "DCR: median Gower distance to the closest training row (synthetic rows; held-out "
            "rows for reference); closer to train: share of synthetic rows closer to training "
            "rows than to as many held-out rows (0.5: no sign of memorisation)",
            "model bytes: encoded messages up + down over all rounds; encoder bytes: the "
            "per-client statistics sent once to fit the encoder (JSON)",
            "vertical: configs/tabular_<table>_vertical.yaml (CTGAN split GTV-style: server "
            "body and critic top, each client its head and critic input block); "
            "vertical_tvae: configs/tabular_<table>_vertical_tvae.yaml (TVAE split the same "
            "way: server encoder top and decoder body, each client its share of the "
            "encoder's first layer and its columns' decoder output layer); "
            f"{args.rounds} rounds of local steps x the horizontal recipe's clients joint "
            "iterations; vertical-1 (one client, every column) is the reference of its "
            "rows' ratios; groups in benchmarks/tabular.py VERTICAL_SPLITS; model bytes: "
            "wire bytes the clients sent plus received (activations, gradients, "
            "conditions, record ids)",
        ],
    )
    commit = current_commit()
    if args.folds is not None and args.folds < 2:
        raise SystemExit(f"--folds {args.folds}: cross-validation needs at least 2 folds")
    folds: list[int | None] = list(range(args.folds)) if args.folds else [None]
    with tempfile.TemporaryDirectory(prefix="tabular-bench-") as tmp:
        for name in args.tables:
            for synth in args.synths:
                runs: dict[str, list[dict[str, Any]]] = {}
                for fold in folds:
                    central: dict[str, Any] | None = None
                    for method in args.methods:
                        r = run_method(name, synth, method, sets, Path(tmp), args, fold)
                        if r is None:
                            continue
                        if method in ("centralized", "vertical-1"):
                            central = r
                        label = (
                            method if fold is None else f"{method} (fold {fold + 1}/{len(folds)})"
                        )
                        union = r.pop("union", None)
                        print(table.append(table_row(commit, name, synth, label, r, central)))
                        runs.setdefault(method, []).append(r)
                        if union is not None:
                            own = f"{method}+finetune-{args.personalize_steps}"
                            label = own if fold is None else f"{own} (fold {fold + 1}/{len(folds)})"
                            row = table_row(commit, name, synth, label, union, central)
                            print(table.append(row))
                            runs.setdefault(own, []).append(union)
                if args.folds:
                    means = {method: mean_figures(rs) for method, rs in runs.items()}
                    central = means.get("centralized") or means.get("vertical-1")
                    for method, r in means.items():
                        label = f"{method} ({args.folds}-fold mean)"
                        print(table.append(table_row(commit, name, synth, label, r, central)))


def run_method(
    name: str,
    synth: str,
    method: str,
    sets: list[str],
    work: Path,
    args: argparse.Namespace,
    fold: int | None,
) -> dict[str, Any] | None:
    """One method's run on one table (and fold), or None when the method does not apply."""
    if synth.startswith("vertical") != (method in VERTICAL):
        return None  # vertical methods belong to the vertical synthesizer only
    if method.startswith("silos") and get_table_source(name).silo_column is None:
        # Its recipe's own partition would run, under the silos label.
        print(f"{name} has no silo column: no silos row", flush=True)
        return None
    if method in VERTICAL:
        # As many joint iterations as the horizontal centralized run's steps.
        clients = load_config(ROOT / f"configs/tabular_{name}_ctgan.yaml", sets).data.num_clients
        steps_per_round = (args.local_steps or 10) * clients
        return vertical_method(name, synth, method, sets, work, steps_per_round, fold, args.folds)
    if method == "library":
        if synth.endswith(CONDITIONED):
            return None  # the library's own rows are its tvae / ctgan rows
        steps, batch, seed = library_steps(name, synth, sets)
        return library_method(name, synth, steps, batch, seed, fold, args.folds)
    return fedgen_method(
        name, synth, method, sets, work, args.alpha, fold, args.folds, args.personalize_steps
    )


if __name__ == "__main__":
    main()
