"""`fedgen` command line: run, report, sample, eval, data, privacy, ledger, deploy, attack."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from fedgen.attacks.command import attack_command
from fedgen.errors import ConfigError, FedgenError
from fedgen.samples.export_format import ExportFormat
from fedgen.samples.model_choice import ModelChoice
from fedgen.version import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    # Click (8.2+) already suggests the nearest command; Typer's own suggestion would
    # print "Did you mean 'eval'?" a second time on the same line.
    suggest_commands=False,
    help="Federated training of generative models on real data.",
)

DEFAULT_RUNS = Path("runs")

#: The recipe argument and options that `run` and `deploy run` share.
RecipeArg = Annotated[
    Path | None, typer.Argument(help="YAML recipe (default: the default experiment)")
]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value override")]
OutOption = Annotated[Path | None, typer.Option(help="run folder (default: runs/<name>)")]
#: Which model of a finished run `sample` and `eval` use.
ModelOption = Annotated[
    ModelChoice,
    typer.Option(
        "--model",
        help="run: the model the run's own evaluations showed (its eval.model; "
        "summary.json's evaluated_model names it); global: the federated tensors, "
        "private ones at their initial values; largest_client: the own model of the "
        "largest client that trained; union: images of each class from the own models of "
        "the clients holding it, by their examples of it",
    ),
]

privacy_app = typer.Typer(
    no_args_is_help=True,
    help="Differential-privacy arithmetic with Opacus's accountants (Poisson-subsampled "
    "Gaussian mechanism): epsilon for a noise multiplier, or the multiplier for an epsilon.",
)
app.add_typer(privacy_app, name="privacy")
ledger_app = typer.Typer(
    no_args_is_help=True,
    help="The run's signed, tamper-evident log of every round (RFC 6962 Merkle log).",
)
app.add_typer(ledger_app, name="ledger")
deploy_app = typer.Typer(
    no_args_is_help=True,
    help="Run a recipe across machines on Flower: here, a SuperLink and SuperNodes on "
    "this machine with TLS and node authentication (needs fedgen[flower]).",
)
app.add_typer(deploy_app, name="deploy")
app.command("attack")(attack_command)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    config: RecipeArg = None,
    set_: SetOption = None,
    out: OutOption = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this folder")] = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="log lines instead of a bar")
    ] = False,
) -> None:
    """Train an experiment (default: cGAN on Fashion-MNIST, 10 clients, Dirichlet 0.5, FedAvg)."""
    from contextlib import ExitStack

    from fedgen.config import load_config
    from fedgen.engine.run_lock import folder_hold
    from fedgen.experiment import run_experiment

    try:
        with ExitStack() as holds:
            if resume is not None and (config is not None or out is not None):
                raise FedgenError(
                    f"--resume {resume} continues that run with its own config.yaml, in that "
                    "folder: drop the recipe argument and --out (--set still applies)"
                )
            if resume is not None:
                if resume.is_dir():
                    # Held before its config.yaml is read (another process may be rewriting
                    # it); the run below holds it again (holds nest).
                    holds.enter_context(folder_hold(resume))
                cfg_file = resume / "config.yaml"
                if not cfg_file.is_file():
                    raise FedgenError(f"{resume} is not a run folder (no config.yaml)")
                # The run's own recipe, read like any recipe: a damaged file is a clear error.
                cfg = load_config(cfg_file, set_ or [])
                run_dir = resume
            else:
                cfg = load_config(config, set_ or [])
                run_dir = out or DEFAULT_RUNS / (
                    cfg.name + ("-centralized" if cfg.federation.centralized else "")
                )
                _refuse_recipe_overwrite(config, run_dir)
            if cfg.downstream is not None:
                # Generator, then the classifier arms that use it (fedgen.downstream); a
                # resume finishes both (the arms it finished are kept).
                from fedgen.downstream import run_downstream

                summary = run_downstream(
                    cfg, run_dir, progress=not no_progress, resume=resume is not None
                )
            else:
                summary = run_experiment(
                    cfg, run_dir, progress=not no_progress, resume=resume is not None
                )
    except FedgenError as exc:
        _fail(exc)
        return
    _say_summary(summary, run_dir, f"fedgen run --resume {run_dir}")


def _refuse_recipe_overwrite(config: Path | None, run_dir: Path) -> None:
    """The run writes its resolved config.yaml into ``run_dir``: refuse when that file is
    the user's own recipe (comments and all, it would be replaced)."""
    if config is not None and (run_dir / "config.yaml").resolve() == config.resolve():
        raise FedgenError(
            f"--out {run_dir} would overwrite the recipe {config} with the run's "
            f"config.yaml; give the run a folder of its own (e.g. --out {run_dir / 'run'})"
        )


def _say_summary(summary: dict[str, Any], run_dir: Path, resume: str) -> None:
    """Print a finished run's figures and why it stopped early, if it did."""
    figures = {k: v for k, v in summary.items() if k != "descriptions"}
    typer.echo(json.dumps(figures, indent=1))
    if summary["status"] == "budget_exhausted":
        typer.secho(
            f"stopped after {summary['rounds']} of {summary.get('planned_rounds')} rounds: "
            f"{summary.get('stop_reason')}",
            fg=typer.colors.YELLOW,
            err=True,
        )
    if summary["status"] == "failed":
        typer.secho(
            f"failed after {summary['rounds']} round(s): {summary.get('stop_reason')}\n"
            f"run folder: {run_dir}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=1)
    if summary["status"] == "interrupted":
        from fedgen.engine.checkpoint import list_checkpoints

        if kept := list_checkpoints(run_dir / "checkpoints"):
            # With checkpoint.every > 1 the newest checkpoint may trail the last round.
            newest = kept[-1][0]
            said = (
                f"interrupted after round {summary['rounds'] - 1}; the newest checkpoint is "
                f"round {newest}'s, so a resume trains from round {newest + 1}: {resume}"
            )
        else:
            # Nothing to resume from: the advice is to start again, and where.
            said = (
                "interrupted before a checkpoint was written: nothing to resume; start the "
                "run again"
                + (f" (--out {run_dir} is free)" if not summary["rounds"] else " elsewhere")
            )
        typer.secho(said, fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130)
    typer.echo(f"run folder: {run_dir}  (open {run_dir / 'report.html'})")


@app.command()
def report(run_dir: Path) -> None:
    """(Re)write RUN_DIR/report.html from what the run folder holds."""
    from fedgen.report.html import REPORT_NAME, write_report

    holds = (
        "a run folder is what `fedgen run` writes: config.yaml, metrics.jsonl, summary.json, "
        "checkpoints/ and samples/; give that folder (e.g. runs/NAME)"
    )
    if not run_dir.is_dir():
        _fail(FedgenError(f"{run_dir} is not a folder; {holds}"))
    # Any other folder would get a report.html of nothing, over whatever file had that name.
    if not (run_dir / "config.yaml").is_file() and not (run_dir / "metrics.jsonl").is_file():
        _fail(
            FedgenError(f"{run_dir} is not a run folder (no config.yaml or metrics.jsonl); {holds}")
        )
    try:
        written = write_report(run_dir)
    except OSError as exc:
        _fail(FedgenError(f"cannot write {run_dir / REPORT_NAME}: {exc.strerror or exc}"))
        return
    typer.echo(str(written))


@app.command(
    help="Draw N samples per condition from the newest checkpoint of RUN_DIR.\n\n"
    "Written as the task's modality is shown (images: per class, into a PNG grid); with "
    "--format, a labelled synthetic image data set and its manifest. The model is the one "
    "the run's own evaluations showed (eval.model), unless --client or --model says otherwise."
)
def sample(
    run_dir: Path,
    n: Annotated[
        int, typer.Option("--per-class", "--n", min=1, help="samples per class or prompt")
    ] = 10,
    out: Annotated[
        Path | None,
        typer.Option(
            help="file or folder to write (default: samples.png, or samples.npz, samples/)"
        ),
    ] = None,
    fmt: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            help="images: export a labelled synthetic data set as a PNG grid, an .npz "
            "(images, labels, class_names) or a folder per class, with a JSON manifest "
            "of the checkpoint's round and sha256 beside it",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    prompt: Annotated[
        str | None, typer.Option(help="text tasks: print N continuations of this prompt")
    ] = None,
    client: Annotated[
        int | None,
        typer.Option(
            help="sample the model as this client holds it (global + its private tensors)"
        ),
    ] = None,
    model: ModelOption = ModelChoice.RUN,
    condition: Annotated[
        str | None,
        typer.Option(help="tables: N rows whose categorical COLUMN holds VALUE (COLUMN=VALUE)"),
    ] = None,
    best_of: Annotated[
        int | None,
        typer.Option(
            "--best-of",
            min=1,
            max=64,
            help="conditional GANs: each image the best of N draws by the discriminator's "
            "score (default: the run's eval.best_of)",
        ),
    ] = None,
) -> None:
    """Draw samples from a run's newest checkpoint (the command's help says how)."""
    from fedgen.engine.client_models import load_chosen_model, model_label
    from fedgen.engine.image_union import UNION
    from fedgen.experiment import load_run
    from fedgen.registry import SAMPLE_WRITERS
    from fedgen.samples.image_dataset import check_grid_size, check_parent, image_shape
    from fedgen.seeding import torch_generator
    from fedgen.tasks.best_of import keep_best_of

    if fmt is not None and (prompt is not None or condition is not None):
        _fail(FedgenError("--format exports images per class; drop --prompt and --condition"))
    if out is not None:
        out = out.resolve()  # ``--out .`` has no name of its own to build others from
        if out.is_dir() and fmt != ExportFormat.FOLDER:
            # A folder takes the files under their default name, inside it: its own name
            # with a suffix would be a file beside it, outside the folder.
            out = out / "samples"
    union = None
    try:
        exp = load_run(run_dir)
        # The run's own choice by default: what its grids and summary.json showed.
        run_union = model == ModelChoice.RUN and exp.config.eval.model == UNION
        if model == ModelChoice.UNION or (run_union and client is None):
            union = _union(exp, client, torch_generator(seed, "cli-sample"))
            task, chosen = union, None
        else:
            task, chosen = load_chosen_model(exp.federation, exp.config.eval.model, model, client)
        # The run's eval.best_of by default (plain draws for a union, which it cannot do).
        draws = best_of or (1 if union is not None else exp.config.eval.best_of)
        if draws > 1 and union is not None:
            raise ConfigError(
                f"--best-of {draws} draws from one model, not the union of the clients' "
                "own; drop --best-of, or add --model global"
            )
        task = keep_best_of(task, draws)
    except FedgenError as exc:
        _fail(exc)
        return
    if union is not None:
        typer.echo(f"sampling the union of {len(union.clients)} clients' own models", err=True)
    if chosen is not None and client is None:
        # Said on stderr: stdout stays the written path or the text, as before.
        why = "the run's eval.model" if model == ModelChoice.RUN else f"--model {model}"
        typer.echo(
            f"sampling {model_label(chosen)}'s own model ({why}); --model global samples "
            "the global model",
            err=True,
        )
    gen = torch_generator(seed, "cli-sample")
    if prompt is not None:
        from fedgen.modality import Conditioning

        if task.conditioning != Conditioning.PROMPT:
            _fail(FedgenError(f"task {exp.config.task.name} is not prompted; drop --prompt"))
        for text in task.sample([prompt] * n, gen):
            typer.echo(f"--- {prompt}{text}")
        return
    if condition is not None:
        from fedgen.modality import Conditioning

        column, sep, value = condition.partition("=")
        if task.conditioning != Conditioning.COLUMN or not sep:
            _fail(FedgenError("--condition takes COLUMN=VALUE, for table tasks only"))
        try:
            rows = task.sample((n, {column: value}), gen)
        except ValueError as exc:
            _fail(FedgenError(str(exc)))
        csv_path = (out or Path("samples.csv")).with_suffix(".csv")
        try:
            check_parent(csv_path)
            rows.to_csv(csv_path, index=False)
        except (FedgenError, OSError) as exc:
            _fail(_unwritable(csv_path, exc))
        typer.echo(str(csv_path))
        return
    if fmt is not None:
        label = None if union is None else f"union of {len(union.clients)} clients' own models"
        _export_dataset(exp, task, run_dir, out, n, fmt, gen, seed=seed, client=chosen, label=label)
        return
    from fedgen.modality import Modality

    writer = SAMPLE_WRITERS.get(str(task.modality))
    path = (out or Path("samples.png")).with_suffix("")
    try:
        check_parent(path)
        if task.modality == Modality.IMAGES:
            # One picture built whole in memory: bounded before anything is drawn.
            check_grid_size(task.num_classes, n, image_shape(task))
        written = writer(task, path, n, gen)
    except (FedgenError, OSError) as exc:
        _fail(_unwritable(path, exc))
        return
    typer.echo(str(written))


def _unwritable(path: Path, exc: Exception) -> FedgenError:
    """A failed write of ``sample`` as one line that says what to do."""
    if isinstance(exc, FedgenError):
        return exc
    where = getattr(exc, "filename", None) or path
    why = getattr(exc, "strerror", None) or str(exc)
    return FedgenError(f"cannot write {where}: {why}; choose another --out")


def _export_dataset(
    exp: Any,
    task: Any,
    run_dir: Path,
    out: Path | None,
    per_class: int,
    fmt: ExportFormat,
    gen: Any,
    *,
    seed: int,
    client: int | None,
    label: str | None = None,
) -> None:
    """`fedgen sample --format`: the data set, and a manifest naming the checkpoint it
    came from (round and the sha256 of its file, as the run's ledger records it);
    ``label`` names the model when it is no one model (the union)."""
    from fedgen.engine.checkpoint import checkpoint_path
    from fedgen.engine.client_models import model_label
    from fedgen.modality import Modality
    from fedgen.samples.image_dataset import export_image_dataset

    if task.modality != Modality.IMAGES:
        _fail(
            FedgenError(
                f"--format exports image data sets; task {exp.config.task.name} makes "
                f"{task.modality} (tables: --condition COLUMN=VALUE writes a CSV; text: --prompt)"
            )
        )
    round_ = exp.federation.next_round - 1
    # The file the model was loaded from, named whether or not it is still there.
    checkpoint = checkpoint_path(run_dir / "checkpoints", round_)
    # The digest of the bytes the model was loaded from, not of the file now (a run
    # going on beside may have replaced or pruned it since).
    digest = exp.federation.restored_digest
    provenance = {
        "run": str(run_dir.resolve()),
        "task": exp.config.task.name,
        "checkpoint_round": round_,
        "checkpoint_file": checkpoint.name,
        "checkpoint_sha256": digest,
        "config_fingerprint": exp.config.fingerprint(),
        "seed": seed,
        # The model sampled: null for the global one, else the client whose own it is.
        "client": client,
        "model": label or model_label(client),
        # Each image the best of this many draws by the discriminator (1: plain draws).
        "best_of": getattr(task, "best_of", 1),
        "fedgen_version": __version__,
    }
    privacy = exp.federation.privacy
    if privacy is not None:
        # What a user of the data set most needs to know: the guarantee it carries.
        spent: dict[str, Any] = {"unit": privacy.unit, **privacy.figures()}
        if privacy.client is not None and (client is not None or label is not None):
            spent["note"] = (
                "client-level DP noises the federated model; a client's own tensors in "
                "this model are not covered"
            )
        provenance["privacy"] = spent
    names = _class_names(run_dir, task.num_classes)
    default = Path("samples") if fmt is ExportFormat.FOLDER else Path(f"samples.{fmt}")
    try:
        target, manifest = export_image_dataset(
            task, out or default, per_class, fmt, gen, names, provenance
        )
    except (FedgenError, OSError) as exc:
        # ExportError says what to do; an OSError past its checks (disk full) is one line too.
        _fail(_unwritable(out or default, exc))
        return
    typer.echo(f"{target}  ({per_class * task.num_classes} images; manifest {manifest})")


def _union(exp: Any, client: int | None, generator: Any) -> Any:
    """`--model union`: the union of a finished run's clients' own models."""
    from fedgen.engine.image_union import personal_union
    from fedgen.errors import ConfigError

    if client is not None:
        raise ConfigError(f"--client {client} and --model union each choose a model; give one")
    return personal_union(exp.federation, generator)


def _class_names(run_dir: Path, num_classes: int) -> list[str]:
    """The class names partition.json records, else the labels as text."""
    try:
        names = json.loads((run_dir / "partition.json").read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        names = None
    if isinstance(names, list) and len(names) == num_classes:
        return [str(name) for name in names]
    return [str(i) for i in range(num_classes)]


@app.command(
    "eval",
    help="Evaluate the newest checkpoint of RUN_DIR; write RUN_DIR/eval.json and print it."
    "\n\nThe model is the one the run's own evaluations showed, unless --model says otherwise.",
)
def eval_(
    run_dir: Path,
    tstr_samples: Annotated[int | None, typer.Option(help="synthetic images for TSTR")] = None,
    model: ModelOption = ModelChoice.RUN,
) -> None:
    """Evaluate a run's newest checkpoint (the command's help says how)."""
    from pydantic import ValidationError

    from fedgen.config import EvalConfig
    from fedgen.engine.image_union import run_model_label
    from fedgen.errors import ConfigError
    from fedgen.experiment import evaluate_task, load_run

    try:
        if tstr_samples is not None:
            # The run's own bound (eval.tstr_samples), checked before the run is loaded.
            try:
                EvalConfig(tstr_samples=tstr_samples)
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"]
                raise ConfigError(f"--tstr-samples {tstr_samples}: {msg}") from None
        exp = load_run(run_dir)
        if tstr_samples is not None:
            exp.config.eval.tstr_samples = tstr_samples
        if model == ModelChoice.GLOBAL:
            exp.config.eval.model = "global"
        elif model == ModelChoice.LARGEST_CLIENT:
            exp.config.eval.model = "largest_client"
        elif model == ModelChoice.UNION:
            exp.config.eval.model = "union"
        figures: dict[str, Any] = evaluate_task(exp, tstr=True)
        which = run_model_label(exp.federation, exp.config.eval.model)
    except FedgenError as exc:
        _fail(exc)
        return
    figures["round"] = exp.federation.next_round - 1
    figures["evaluated_model"] = which
    text = json.dumps(figures, indent=1)
    # The figures first: they cost minutes, and a folder that cannot be written (a
    # read-only copy of a run) must not lose them to a traceback.
    typer.echo(text)
    from fedgen.files import write_text_atomic

    try:
        write_text_atomic(run_dir / "eval.json", text)
    except OSError as exc:
        _fail(
            FedgenError(
                f"could not write {run_dir / 'eval.json'} ({exc.strerror or exc}); the "
                "figures are printed above. Copy the run to a folder you can write to, "
                "to keep them beside it"
            )
        )


@app.command()
def data(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="data folder (default $FEDGEN_DATA_DIR or ~/.cache/fedgen/data)"),
    ] = None,
    download: Annotated[
        str | None, typer.Option(help="fetch this source from its canonical address")
    ] = None,
) -> None:
    """List data sources: where each was looked for, which are present, how to get the rest."""
    from fedgen.data.sources import get_source, source_statuses

    try:
        if download:
            typer.echo(f"downloaded to {get_source(download).download(data_dir)}")
        for st in source_statuses(data_dir):
            mark = (
                typer.style("present", fg=typer.colors.GREEN)
                if st.present
                else typer.style("missing", fg=typer.colors.RED)
            )
            typer.echo(f"{st.name:14s} {mark}  {st.found_at or ''}")
            for p in st.searched:
                typer.echo(f"    looked in {p}")
            if not st.present:
                typer.echo("    provide it with:\n      " + st.provide.replace("\n", "\n      "))
    except FedgenError as exc:
        _fail(exc)


SampleRate = Annotated[
    float,
    typer.Option(
        "--sample-rate",
        help="Poisson sampling rate q per step (client level: strategy fraction; "
        "DP-SGD: batch_size / examples)",
    ),
]
Rounds = Annotated[
    int, typer.Option("--rounds", help="number of steps T (rounds, or DP-SGD steps)")
]
Delta = Annotated[float, typer.Option("--delta", help="delta of the guarantee")]
Accountant = Annotated[str, typer.Option("--accountant", help="rdp or prv")]


@privacy_app.command("epsilon")
def privacy_epsilon(
    noise_multiplier: Annotated[float, typer.Option("--noise-multiplier", help="z")],
    sample_rate: SampleRate,
    rounds: Rounds,
    delta: Delta,
    accountant: Accountant = "rdp",
) -> None:
    """Print {"epsilon": ..., "delta": ...} after ROUNDS steps at noise multiplier Z."""
    from fedgen.privacy.accounting import compute_epsilon

    try:
        eps = compute_epsilon(noise_multiplier, sample_rate, rounds, delta, accountant)
    except FedgenError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps({"epsilon": eps, "delta": delta}))


@privacy_app.command("noise")
def privacy_noise(
    epsilon: Annotated[float, typer.Option("--epsilon", help="target epsilon")],
    sample_rate: SampleRate,
    rounds: Rounds,
    delta: Delta,
    accountant: Accountant = "rdp",
) -> None:
    """Print {"noise_multiplier": ..., "epsilon": ..., "delta": ...}: the calibrated z."""
    from fedgen.privacy.accounting import calibrate_noise, compute_epsilon

    try:
        z = calibrate_noise(epsilon, sample_rate, rounds, delta, accountant)
        spent = compute_epsilon(z, sample_rate, rounds, delta, accountant)
    except FedgenError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps({"noise_multiplier": z, "epsilon": spent, "delta": delta}))


@ledger_app.command("verify")
def ledger_verify(
    run_dir: Path,
    server_key: Annotated[
        str | None,
        typer.Option(help="the server's public key (hex) to trust, instead of the log's own"),
    ] = None,
) -> None:
    """Check every signature, inclusion and consistency proof, and the checkpoints on disk.

    Exit status 0 when all holds; else 1, a line per problem (round, client, what differs).
    """
    from fedgen.engine.keystore import KeyStore
    from fedgen.engine.ledger_callback import checkpoint_anchors, recorded_elsewhere
    from fedgen.ledger import LEDGER_FILE, Ledger, verify_run
    from fedgen.ledger.keys import public_key_from_hex

    if not run_dir.is_dir():
        _fail(FedgenError(f"{run_dir} is not a folder"))
    if server_key is not None:
        # A mistyped option is the caller's error, not a problem found in the ledger.
        try:
            public_key_from_hex(server_key)
        except FedgenError as exc:
            _fail(FedgenError(f"--server-key: {exc}"))
    # What the server kept outside the run folder pins the log: its key and its heads.
    store = KeyStore()
    try:
        with Ledger.open(run_dir / LEDGER_FILE, readonly=True) as ledger:
            run_id = str((ledger.run_start or {}).get("run_id", ""))
    except FedgenError:
        run_id = ""  # verify_run names what is wrong with the file
    anchors, unreadable = checkpoint_anchors(run_dir / "checkpoints", run_id)
    stored_key, stored_heads = store.pins(run_id)
    if stored_key is None and not stored_heads and run_id and server_key is None:
        # A log the store does not know, in a folder where the store records another
        # run: the log was replaced (a new run id re-signed under a key of one's own).
        others = [r for r in store.runs_in(run_dir) if r != run_id]
        if others:
            unreadable.append(
                f"the key store {store.directory} records run {others[-1][:12]}… in this "
                f"folder, but its ledger names run {run_id[:12]}…, which the store does not "
                "know: the log was replaced, or this run's keys are in another key store "
                "(set FEDGEN_KEY_DIR to it, or pass --server-key)"
            )
    recorded = recorded_elsewhere(store, run_id, run_dir) if run_id.isalnum() else None
    if recorded is not None:
        typer.echo(
            f"note: the key store records this run in {recorded}; this folder is a copy, so "
            "signed heads past its log are that folder's later rounds"
        )
    if stored_key is not None or stored_heads:
        server_key = server_key or stored_key
        anchors += stored_heads
        typer.echo(
            f"pinned by the key store {store.directory}: the server key and "
            f"{len(stored_heads)} signed heads"
        )
    elif server_key is None:
        typer.echo(
            f"note: no entry for this run in the key store {store.directory} (set "
            "FEDGEN_KEY_DIR): the log's own server key and the checkpoints' heads are "
            "trusted; pass --server-key to check against a key you hold"
        )
    report = verify_run(run_dir, server_public_key=server_key, anchors=anchors)
    problems = report.problems + unreadable
    for line in report.notes:
        typer.echo(f"note: {line}")
    for line in problems:
        typer.secho(f"problem: {line}", fg=typer.colors.RED)
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    if problems:
        typer.secho(f"ledger NOT verified: {len(problems)} problem(s) ({counts})", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"ledger verified: {counts}")


@ledger_app.command("show")
def ledger_show(
    run_dir: Path,
    round: Annotated[int | None, typer.Option("--round", min=0, help="only this round")] = None,
) -> None:
    """Print the log's entries, one line each."""
    from fedgen.ledger import LEDGER_FILE, Ledger, format_entries

    try:
        with Ledger.open(run_dir / LEDGER_FILE, readonly=True) as ledger:
            lines = format_entries(ledger, round=round)
    except FedgenError as exc:
        _fail(exc)
    for line in lines:
        typer.echo(line)


DEFAULT_DEPLOYMENT = Path("runs/deployment")


@deploy_app.command("up")
def deploy_up(
    nodes: Annotated[int, typer.Option(help="SuperNodes to start; node i holds client i")] = 3,
    folder: Annotated[
        Path, typer.Option(help="certificates, keys, logs and state of the deployment")
    ] = DEFAULT_DEPLOYMENT,
) -> None:
    """Start a SuperLink and N SuperNodes on this machine (TLS, node authentication)."""
    from fedgen.deploy import local

    try:
        dep = local.up(folder, nodes)
    except FedgenError as exc:
        _fail(exc)
        return
    typer.echo(
        f"SuperLink on {dep.address} (TLS, CA {folder / 'certs' / 'ca.crt'}), "
        f"{nodes} SuperNodes online; logs in {folder / 'logs'}"
    )


@deploy_app.command("run")
def deploy_run(
    config: RecipeArg = None,
    set_: SetOption = None,
    out: OutOption = None,
    folder: Annotated[Path, typer.Option(help="the deployment's folder")] = DEFAULT_DEPLOYMENT,
    timeout: Annotated[float | None, typer.Option(help="seconds before the run is stopped")] = None,
) -> None:
    """Run a recipe on the deployment; a run folder with checkpoints is resumed."""
    from fedgen.config import load_config
    from fedgen.deploy import local

    try:
        # Read here first: a bad recipe fails before anything is submitted.
        cfg = load_config(config, set_ or [])
        run_dir = out or DEFAULT_RUNS / cfg.name
        _refuse_recipe_overwrite(config, run_dir)
        local.LocalDeployment.load(folder)  # none yet: say so before writing into it
        recipe = config or _default_recipe(folder)
        outcome = local.run(folder, recipe, run_dir, set_ or [], timeout=timeout)
    except FedgenError as exc:
        _fail(exc)
        return
    if not outcome.ok:
        typer.secho(
            f"Flower run {outcome.run_id} ended {outcome.status}; its log: {outcome.log}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=1)
    # The ServerApp wrote the run folder: say what it says, as `fedgen run` does (a run
    # stopped by its privacy budget would otherwise end without a word).
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        again = f"fedgen deploy run {recipe} --out {run_dir}"
        _say_summary(json.loads(summary_file.read_text()), run_dir, again)
    else:
        typer.echo(f"run folder: {run_dir}  (open {run_dir / 'report.html'})")


def _default_recipe(folder: Path) -> Path:
    """The default experiment as a recipe file the ServerApp can read."""
    from fedgen.config import load_config

    path = folder.resolve() / "default-recipe.yaml"
    path.write_text(load_config(None).to_yaml())
    return path


@deploy_app.command("down")
def deploy_down(
    folder: Annotated[Path, typer.Option(help="the deployment's folder")] = DEFAULT_DEPLOYMENT,
) -> None:
    """Stop the SuperLink and SuperNodes that `fedgen deploy up` started."""
    from fedgen.deploy import local

    try:
        local.down(folder)
    except FedgenError as exc:
        _fail(exc)
        return
    typer.echo(f"stopped the deployment in {folder} (its files are kept)")


def main() -> None:
    """Entry point of the `fedgen` script."""
    import os

    # Before torch loads: spinning OpenMP threads slow everything on a shared CPU.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
