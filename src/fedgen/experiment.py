"""Build a whole experiment from a config and run it into a run folder.

The run folder holds the resolved ``config.yaml``, ``partition.json``,
``metrics.jsonl``, ``summary.json``, ``checkpoints/``, ``samples/`` and
``report.html``. ``run_experiment`` starts or resumes a run; everything the
CLI does is reachable from here in a few lines of Python.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedgen.config import ExperimentConfig, load_config, parse_config
from fedgen.data.client_data import ClientData
from fedgen.engine.audit import RunAudit
from fedgen.engine.callbacks import (
    CheckpointCallback,
    EvaluationCallback,
    MetricsWriter,
    ProgressCallback,
    PublishSamples,
)
from fedgen.engine.checkpoint import (
    RESUME_ADVICE,
    check_payload,
    list_checkpoints,
    newest_intact,
    restore_state,
)
from fedgen.engine.client_models import evaluated_client, has_personal_models, load_client_model
from fedgen.engine.client_side import ClientBuildError, ClientKit, ClientSide
from fedgen.engine.faults import FaultPlan
from fedgen.engine.federation import Callback, Federation
from fedgen.engine.image_union import UNION, describe_union_model, load_run_model, union_holders
from fedgen.engine.ledger_callback import LedgerCallback
from fedgen.engine.modes import schedule_for
from fedgen.engine.run_lock import Hold, folder_hold
from fedgen.errors import CheckpointError, ConfigError, FedgenError
from fedgen.files import write_text_atomic
from fedgen.modality import DataSpec, Modality
from fedgen.params import ParamsError, validate_params
from fedgen.privacy.errors import PrivacyConfigError
from fedgen.privacy.noise_key import new_noise_key
from fedgen.registry import (
    BACKENDS,
    EVALUATORS,
    PARTITIONERS,
    SOURCES,
    STRATEGIES,
    TASKS,
    TEXT_SOURCES,
    TRANSFORMS,
)
from fedgen.seeding import derive_seed, torch_generator
from fedgen.tasks.base import Task, bfloat16_is_slow
from fedgen.tasks.best_of import best_of_problems

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass
class Experiment:
    """The parts of one experiment, built from its config."""

    config: ExperimentConfig
    federation: Federation
    data: Any  # fedgen.data.federated.FederatedData
    evaluator: Any  # fedgen.eval.evaluator.Evaluator (built lazily: it trains a classifier)
    #: Per-client figures' scorer (``eval.per_client``; built with the evaluator).
    client_quality: Any = None

    @property
    def task(self) -> Task:
        return self.federation.task


def build_task(cfg: ExperimentConfig, spec: DataSpec) -> Task:
    """The task named by the config for data ``spec``, with validated params and seeded
    initial weights; ``ConfigError`` when the task does not model that modality."""
    cls: type[Task] = TASKS.get(cfg.task.name)
    params = validate_params(cls, cfg.task.params, "task.params")
    try:
        task = cls.from_spec(params, spec, derive_seed(cfg.seed, "init"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"task.name: {exc}") from exc
    return task


def build_experiment(
    cfg: ExperimentConfig,
    callbacks: list[Callback] | None = None,
    *,
    table_encoder: dict[str, Any] | None = None,
    start_weights: bool = True,
) -> Experiment:
    """Load data, partition it, and wire task, strategy, transforms, backend and loop.

    ``table_encoder``: a table's merged encoder already fitted (``encoder_state``), which a
    client building its side from the recipe receives instead of fitting it again.
    ``start_weights``: load ``federation.init_from``'s model; False where a checkpoint or
    the server's jobs replace every weight anyway (a resume, a finished run reopened, a
    client), so the source run's folder need not be there.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    fed_cfg = cfg.federation
    # Every component's params are typed before any data is loaded. Their problems join
    # those found while building below, so that all are reported at once (DP settings
    # included); without a valid partitioner or task nothing more can be checked.
    problems: list[str] = []
    partition_params = _params_or_note(
        problems,
        PARTITIONERS.get(cfg.data.partition.kind),
        cfg.data.partition.params,
        "data.partition.params",
    )
    task_params = _params_or_note(
        problems, TASKS.get(cfg.task.name), cfg.task.params, "task.params"
    )
    strategy_params = _params_or_note(
        problems, STRATEGIES.get(cfg.strategy.name), cfg.strategy.params, "strategy.params"
    )
    transform_params = [
        _params_or_note(problems, TRANSFORMS.get(t.name), t.params, f"transforms[{i}].params")
        for i, t in enumerate(cfg.transforms)
    ]
    backend_params = _params_or_note(
        problems, BACKENDS.get(cfg.backend.name), cfg.backend.params, "backend.params"
    )
    if partition_params is None or task_params is None:
        raise ParamsError(problems)
    partitioner = PARTITIONERS.get(cfg.data.partition.kind)(**partition_params)
    data, spec = _load_data(cfg, partitioner, task_params, table_encoder)
    clients: list[Any] = list(data.clients)
    local_steps, local_epochs = fed_cfg.local_steps, fed_cfg.local_epochs
    if fed_cfg.centralized:
        # The ceiling: one client holding the pooled data, doing per round the
        # sample-visits of the whole expected cohort, so the budget is equal.
        given = strategy_params or {}
        fraction = float(given.get("fraction", 1.0))
        cohort = max(int(given.get("min_clients", 2)), int(fraction * len(clients) + 0.5))
        clients = [_pooled_client(data, spec)]
        if strategy_params is not None:
            strategy_params.update(fraction=1.0, min_clients=1)
        if local_steps is not None:
            local_steps *= cohort
        else:
            assert local_epochs is not None
            local_epochs *= cohort / cfg.data.num_clients
    task = build_task(cfg, spec)
    if spec.modality == Modality.IMAGES:
        # The run's sample grid is one picture built in memory, as fedgen sample's is.
        from fedgen.samples.image_dataset import check_grid_size, image_shape

        try:
            check_grid_size(task.num_classes, cfg.eval.grid_per_class, image_shape(task))
        except FedgenError:
            problems.append(
                f"eval.grid_per_class={cfg.eval.grid_per_class}: the sample grid would pass "
                "the size a picture built in memory may have; lower eval.grid_per_class "
                "(fedgen sample --format npz exports many images in batches)"
            )
    if spec.modality == Modality.TEXT and (cfg.eval.every > 0 or cfg.eval.final):
        # Only a run that evaluates needs held-out text (perplexity).
        from fedgen.data.text_data import heldout_problems

        block_size = int(task.params.block_size)  # type: ignore[attr-defined]
        problems.extend(heldout_problems(list(data.clients), block_size))
    if start_weights and getattr(task.params, "compute_dtype", "float32") == "bfloat16":
        slow = bfloat16_is_slow()
        if slow is not None:
            # Not an error: the recipe is right, only slow here (another machine may
            # have AVX-512 BF16); a run about to train should know before it starts (a
            # loaded run samples in float32 and is not warned).
            log.warning("%s", slow)
    if cfg.eval.best_of > 1:
        problems.extend(f"eval.best_of={cfg.eval.best_of}: {p}" for p in best_of_problems(task))
        if cfg.eval.model == "union":
            problems.append(
                "eval.best_of > 1 draws from one model, not the union of the clients' own "
                "models; set eval.model to global or largest_client, or eval.best_of: 1"
            )
    if fed_cfg.init_from is not None and start_weights:
        _start_from(task, fed_cfg.init_from, cfg, problems)
    strategy = _build_or_note(
        problems,
        f"strategy ({cfg.strategy.name})",
        STRATEGIES.get(cfg.strategy.name),
        strategy_params,
        root_seed=cfg.seed,  # the builder's, never a recipe key
    )
    transforms = [
        _build_or_note(problems, f"transforms[{i}] ({t.name})", TRANSFORMS.get(t.name), params)
        for i, (t, params) in enumerate(zip(cfg.transforms, transform_params, strict=True))
    ]
    backend = _build_or_note(
        problems, f"backend ({cfg.backend.name})", BACKENDS.get(cfg.backend.name), backend_params
    )
    # Simulated attackers (cfg.attack), chosen from the root seed: poisoned
    # shards, or a poisoning first step of the update pipeline.
    if cfg.attack is not None:
        from fedgen.assembly.attack import arm_attack

        clients, transforms, _ = arm_attack(
            cfg.attack, clients, transforms, cfg.seed, fed_cfg.centralized, problems
        )
    # A detection stage before the strategy's aggregation (cfg.detection).
    if cfg.detection is not None and strategy is not None:
        from fedgen.strategies.detection import DetectingStrategy, OutlierDetector

        detector = OutlierDetector(cfg.detection.threshold)
        strategy = DetectingStrategy(strategy, detector, cfg.detection.exclude)
    if transforms:
        # Secure aggregation's composition is checked here, not in build_privacy: it
        # needs the backend and holds without DP; its problems are raised with the rest.
        from fedgen.assembly.secagg import secagg_problems

        problems.extend(
            secagg_problems(
                strategy=strategy,
                transforms=transforms,
                backend=cfg.backend.name,
                centralized=fed_cfg.centralized,
                num_clients=len(clients),
                dimension=_update_dimension(task),
            )
        )
    if transforms:
        # Where an update codec may sit (clip before it, secagg only after a linear one,
        # client-level DP only with one that keeps the norm bound); binds shared seeds.
        from fedgen.assembly.compression import compression_problems

        problems.extend(
            compression_problems(
                transforms=transforms,
                backend=cfg.backend.name,
                root_seed=cfg.seed,
                dpsgd=cfg.dpsgd is not None,
                downlink=fed_cfg.downlink,
            )
        )
    if strategy is not None:
        # Per-client evaluation and Ditto's personal step: what they compose with.
        from fedgen.assembly.personalization import personalization_problems

        problems.extend(personalization_problems(cfg, task, strategy))
    if getattr(task, "samples_jointly", False) != (cfg.backend.name == "vertical"):
        # A column-split synthesizer trains all clients' columns together, which only
        # the vertical backend does; the vertical backend trains nothing else.
        problems.append(
            "tasks vertical_ctgan / vertical_tvae and backend vertical go together: a table "
            "split by columns (table_vertical) is trained by them, and nothing else by either"
        )
    if cfg.dpsgd is not None and cfg.dpsgd.rounds_per_client is not None:
        # Only the synchronous schedule samples its cohorts from the clients with rounds
        # left; and client-level DP's accounting assumes every client can be sampled.
        if cfg.federation.mode != "sync":
            problems.append(
                f"dpsgd.rounds_per_client needs federation.mode=sync (it is "
                f"{cfg.federation.mode!r}, which does not leave spent clients out); drop it"
            )
        if any(t.name == "client_dp" for t in cfg.transforms):
            problems.append(
                "dpsgd.rounds_per_client changes who can be sampled, which client_dp's "
                "accounting assumes it does not; drop one of them"
            )
    if cfg.backend.name == "split" and cfg.uses_dp:
        # The server of split learning sees every client's activations and their
        # gradients each iteration: no update-level guarantee covers what it observes.
        problems.append(
            "backend split: differential privacy covers the federated updates only, but "
            "the split server sees each client's raw activations and gradients; drop the "
            "DP settings or use backend process_pool/inprocess with task cgan"
        )
    downlink = None
    if fed_cfg.downlink is not None:
        # The broadcast as compressed deltas from the model each client last saw.
        from fedgen.assembly.compression import build_downlink

        downlink = build_downlink(
            fed_cfg.downlink,
            mode=fed_cfg.mode,
            backend=cfg.backend.name,
            root_seed=cfg.seed,
            initial=task.federated_state(),
            problems=problems,
        )
    privacy = None
    if problems or cfg.dpsgd is not None or transforms:
        # Imported here: Opacus loads only for experiments that may use DP.
        from fedgen.assembly.privacy import build_privacy

        privacy = build_privacy(
            dpsgd=cfg.dpsgd,
            task=task,
            clients=clients,
            strategy=strategy,
            transforms=transforms,
            rounds=fed_cfg.rounds,
            local_steps=local_steps,
            local_epochs=local_epochs,
            centralized=fed_cfg.centralized,
            problems=problems,
        )
    federation = Federation(
        task=task,
        clients=clients,
        strategy=strategy,
        backend=backend,
        rounds=fed_cfg.rounds,
        seed=cfg.seed,
        local_steps=local_steps,
        local_epochs=local_epochs,
        transforms=transforms,
        callbacks=callbacks or [],
        max_update_norm=fed_cfg.max_update_norm,
        max_failed_rounds=fed_cfg.max_failed_rounds,
        privacy=privacy,
        # Drawn for every run (cheap; only noise draws use it). A resume replaces it
        # with the checkpoint's key.
        noise_key=new_noise_key() if cfg.noise_seed == "secret" else None,
        faults=FaultPlan.from_config(cfg.faults),
        # Fresh keys for every run; a resume replaces them with the checkpoint's.
        audit=RunAudit(sorted(c.client_id for c in clients)) if cfg.ledger else None,
        client_side=RecipeClientSide(
            cfg, _table_encoder_state(data) if spec.modality == Modality.TABLES else None
        ),
        # federation.mode: a synchronous cohort, a FedBuff step or a gossip step per round.
        schedule=schedule_for(fed_cfg, [c.client_id for c in clients], cfg.seed),
        downlink=downlink,
    )
    return Experiment(cfg, federation, data, evaluator=None)


class RecipeClientSide(ClientSide):
    """A client's parts built from the recipe alone, wherever the client runs.

    It carries the recipe as plain JSON (what would cross a wire) and ``open`` runs the
    same ``build_experiment`` the server ran: the same task, the same transforms with
    the same DP calibration, the same deterministic partition, from which the client
    keeps the shards. Nothing of the server's is used but what a server sends its
    clients before round 1 (a table's merged encoder, so that no client process fits it
    again); in a simulation the run's secrets (noise key, signing keys) arrive in the
    client's own messages, and a deployed client makes its own.
    """

    def __init__(self, cfg: ExperimentConfig, table_encoder: dict[str, Any] | None = None) -> None:
        self.recipe = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        #: A table's merged encoder (JSON values), as the server would send it after
        #: merging the clients' statistics: the client side does not fit it again.
        self.table_encoder = table_encoder
        #: A resumed run's DP-SGD sigma and per-client sigmas (``keep_dpsgd_noise``),
        #: which no recipe field can pin; None when the recipe says it all.
        self.client_noise: tuple[float, dict[int, float]] | None = None

    @classmethod
    def from_json(cls, recipe: str) -> RecipeClientSide:
        """The client side of a recipe received as JSON (e.g. in a deployed client's hello)."""
        side = cls.__new__(cls)
        side.recipe = recipe
        side.table_encoder = None
        side.client_noise = None
        return side

    def keep_dpsgd_noise(
        self, noise_multiplier: float, client_noise: dict[int, float] | None
    ) -> None:
        """Pin a resumed run's DP-SGD sigma: one sigma goes into the recipe itself
        (``dpsgd.noise_multiplier``, with ``epsilon`` left as the budget), so a deployed
        client's hello carries it; per-client sigmas are applied by ``open``."""
        recipe = json.loads(self.recipe)
        if client_noise is None:
            recipe["dpsgd"]["noise_multiplier"] = noise_multiplier
            self.recipe = json.dumps(recipe, sort_keys=True)
        else:
            self.client_noise = (noise_multiplier, dict(client_noise))

    def open(self) -> ClientKit:
        """Build the kit; ``ClientBuildError`` when this fedgen cannot read the recipe."""
        try:
            cfg = parse_config(json.loads(self.recipe))
            # A client keeps no ledger (its key arrives with its jobs) and runs no workers.
            cfg = cfg.model_copy(update={"ledger": False})
            fed = build_experiment(
                cfg,
                table_encoder=self.table_encoder,
                # Every job brings the global model, so a client needs no starting
                # weights (nor their file); with a compressed downlink it does: its
                # first deltas are taken from them.
                start_weights=cfg.federation.downlink is not None,
            ).federation
        except (ConfigError, ValueError) as exc:
            raise ClientBuildError(f"this fedgen cannot build the recipe's client: {exc}") from exc
        # The initial model the recipe builds: a compressed downlink's first deltas
        # start from it.
        initial = None if fed.downlink is None else fed.downlink.initial
        sample = None if fed.privacy is None else fed.privacy.sample
        if sample is not None and self.client_noise is not None:
            # As PrivacyState.load_state_dict restores them on the server.
            sample.noise_multiplier, sample.client_noise = self.client_noise
            sample.client_noise = dict(sample.client_noise)
            if sample.engine is not None:
                sample.engine.noise_multiplier = sample.noise_multiplier
                sample.engine.client_noise = sample.client_noise
        return ClientKit(fed.task, fed.transforms, fed.faults, fed.clients, initial, sample)

    def fingerprint(self) -> tuple[object, ...]:
        if self.client_noise is None:
            return (self.recipe, None)
        z, per_client = self.client_noise
        return (self.recipe, z, sorted(per_client.items()))


def _start_from(task: Task, source: str, cfg: ExperimentConfig, problems: list[str]) -> None:
    """Load ``federation.init_from``'s global model into ``task``; what stops it (another
    architecture; under DP, a model trained on the data DP protects) joins ``problems``."""
    from fedgen.engine.initial_weights import fit_problems, read_initial_weights
    from fedgen.ledger.digest import state_digest

    initial = read_initial_weights(source)
    expected = task.federated_state()
    misfit = fit_problems(initial, expected)
    if cfg.uses_dp:
        # A model that saw the private data before carries it past every noise draw of
        # this run: the guarantee would not cover it.
        trained_on = initial.sources
        if trained_on is None:
            problems.append(
                f"federation.init_from: {initial.checkpoint} has no config.yaml in its run "
                "folder, so what it was trained on is unknown; under DP give the run folder "
                "of a model trained on public data only"
            )
        elif overlap := sorted(set(trained_on) & set(cfg.data.sources)):
            problems.append(
                f"federation.init_from: {initial.checkpoint} was trained on "
                f"{', '.join(overlap)}, the data this run protects with DP, which would not "
                "cover what that model learnt; start from a model trained on other (public) "
                "data"
            )
    problems.extend(misfit)
    if not misfit:
        start = {k: initial.state[k] for k in expected}
        task.load_state(start)
        log.info(
            "starting from %s (global model digest %s)",
            initial.checkpoint,
            state_digest(start)[:12],
        )


def _table_encoder_state(data: Any) -> dict[str, Any]:
    """A table federation's merged encoder as JSON values."""
    from fedgen.data.table_encoder import encoder_state

    return encoder_state(data.encoder)


def _load_data(
    cfg: ExperimentConfig,
    partitioner: Any,
    task_params: dict[str, Any],
    table_encoder: dict[str, Any] | None = None,
) -> tuple[Any, DataSpec]:
    """The federated data the recipe names and what a task needs to know of it.

    Text sources are split by whole themes (partition ``themes``), images by a label
    partitioner; a recipe that mixes them is refused with the fix. Text is tokenized
    with the task's own tokenizer (``Task.tokenizer``: a pretrained model's), else bytes.
    """
    from fedgen.data.federated import make_federated_data
    from fedgen.data.text_data import ThemePartition

    # Told by the components themselves, without importing the table modules: a run on
    # images or text never loads pandas.
    tables = getattr(partitioner, "modality", None) == Modality.TABLES or any(
        getattr(SOURCES.get(s), "modality", None) == Modality.TABLES
        for s in cfg.data.sources
        if s in SOURCES
    )
    if tables:
        from fedgen.data.table_data import federate_tables

        dp = cfg.uses_dp
        return federate_tables(
            cfg.data.sources,
            partitioner,
            cfg.data.num_clients,
            cfg.seed,
            dp=dp,
            encoder=table_encoder,
            data_dir=cfg.data.data_dir,
        )
    text = any(s in TEXT_SOURCES for s in cfg.data.sources)
    if text != isinstance(partitioner, ThemePartition):
        kind = "text" if text else "image"
        fix = "themes" if text else "iid, dirichlet or another label partitioner"
        raise ConfigError(
            f"data.partition.kind: {cfg.data.partition.kind!r} cannot split {kind} sources "
            f"{cfg.data.sources}; use {fix}"
        )
    if text:
        task_cls: type[Task] = TASKS.get(cfg.task.name)
        tokenizer = task_cls.tokenizer(task_cls.Params.model_validate(task_params))
        corpus = partitioner.federate(
            cfg.data.sources[0], cfg.data.num_clients, cfg.seed, cfg.data.data_dir, tokenizer
        )
        return corpus, DataSpec(Modality.TEXT, vocab_size=corpus.vocab_size)
    data = make_federated_data(
        cfg.data.sources,
        cfg.data.num_clients,
        partitioner,
        seed=cfg.seed,
        data_dir=cfg.data.data_dir,
    )
    shape = tuple(data.train.images.shape[1:])
    return data, DataSpec(
        Modality.IMAGES,
        num_classes=data.train.num_classes,
        image_shape=shape,  # type: ignore[arg-type]
    )


def _pooled_client(data: Any, spec: DataSpec) -> Any:
    """The centralized ceiling's one client: every client's training data pooled."""
    if spec.modality == Modality.TABLES:
        return data.pooled_client()
    if spec.modality == Modality.TEXT:
        from fedgen.data.text_data import TextClientData

        return TextClientData(
            0,
            tuple(t for c in data.clients for t in c.themes),
            torch.cat([c.tokens for c in data.clients]),
            torch.cat([c.heldout for c in data.clients]),
        )
    return ClientData(0, data.train)


def _update_dimension(task: Task) -> int:
    """Coordinates of a federated update (its floating-point tensors)."""
    return sum(v.numel() for v in task.federated_state().values() if v.is_floating_point())


def _params_or_note(
    problems: list[str], cls: type, params: dict[str, Any], where: str
) -> dict[str, Any] | None:
    """``params`` typed by ``cls.Params``, as constructor keywords; None with every problem
    (each naming its dotted key, which starts with ``where``) noted in ``problems``."""
    try:
        return dict(validate_params(cls, params, where))
    except ParamsError as exc:
        problems.extend(exc.problems)
    return None


def _build_or_note(
    problems: list[str],
    what: str,
    cls: Callable[..., Any],
    params: dict[str, Any] | None,
    **injected: Any,
) -> Any:
    """``cls(**params, **injected)``, or None: when ``params`` is None (they were invalid,
    already noted) or when building raises a ``ConfigError`` (noted in ``problems``)."""
    if params is None:
        return None
    try:
        return cls(**params, **injected)
    except PrivacyConfigError as exc:
        problems.extend(f"{what}: {p}" for p in exc.problems)
    except ConfigError as exc:
        problems.append(f"{what}: {exc}")
    return None


def make_evaluator(cfg: ExperimentConfig, data: Any, modality: Modality = Modality.IMAGES) -> Any:
    """The evaluator registered for ``modality`` (images: trains or loads the feature
    classifier of ``data``)."""
    factory = EVALUATORS.get(str(modality))
    return factory(data, seed=derive_seed(cfg.seed, "eval") % (2**31), settings=cfg.eval)


def evaluate_task(exp: Experiment, tstr: bool) -> dict[str, float]:
    """Quality figures of the run's evaluated model (``eval.model``; TSTR only when asked)."""
    if exp.evaluator is None:
        exp.evaluator = make_evaluator(exp.config, exp.data, exp.task.modality)
    gen = torch_generator(exp.config.seed, "eval-samples", exp.federation.next_round)
    # The global model, the largest client's own, or the union of the clients' own models.
    best_of = exp.config.eval.best_of
    model = load_run_model(exp.federation, exp.config.eval.model, gen, best_of)
    figures: dict[str, float] = exp.evaluator.evaluate_task(model, gen, final=tstr)
    if best_of > 1:
        # Which draws the figures are of (the per-client and union figures below, the
        # downstream generator and the attacks draw plainly).
        figures["best_of"] = float(best_of)
    fed = exp.federation
    if exp.task.modality == Modality.TEXT and fed.privacy is None and has_personal_models(fed):
        # Clients keeping private tensors (personal layers, adapters) are scored with
        # their own model too, as their samples are drawn (not under DP: the figures
        # would describe their unnoised private tensors).
        figures.update(
            exp.evaluator.own_model_figures(fed.task, lambda c: load_client_model(fed, c))
        )
        fed.load_global_into_task()  # text evaluates the global model (evaluated_client)
    if tstr and (exp.config.eval.per_client or exp.config.eval.union):
        from fedgen.assembly.personalization import per_client_figures

        figures.update(per_client_figures(exp))
    return figures


# -- run folders ----------------------------------------------------------------


def run_experiment(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    progress: bool = True,
    resume: bool = False,
    on_ready: Callable[[Experiment], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into run folder ``out`` (or continue it); return ``summary.json``'s content.

    ``on_ready`` is called with the built (and, on resume, restored) experiment just
    before the first round runs: a deployment attaches its transport there.

    Raises ``CheckpointError`` when resuming from a corrupted checkpoint or one
    of another experiment, ``RunHeldError`` when another process writes the run. On
    Ctrl-C the summary says ``"status": "interrupted"``; a resume goes on from the newest
    checkpoint.
    """
    run_dir = Path(out)
    # One process writes a run folder at a time (engine/run_lock.py): held from before an
    # existing folder is read, or from when a new one is made, to the end of the run.
    with ExitStack() as holds:
        hold = folder_hold(run_dir)
        if run_dir.is_dir():
            holds.enter_context(hold)
        return _run(cfg, run_dir, hold, holds, progress=progress, resume=resume, on_ready=on_ready)


def _run(
    cfg: ExperimentConfig,
    run_dir: Path,
    hold: Hold,
    holds: ExitStack,
    *,
    progress: bool,
    resume: bool,
    on_ready: Callable[[Experiment], None] | None,
) -> dict[str, Any]:
    """``run_experiment``'s body; ``holds`` keeps what it takes until the run ends."""
    ckpt_dir = run_dir / "checkpoints"
    # Before any data loads: a folder that cannot hold this run fails at once.
    _check_run_folder(run_dir, cfg, resume)
    meta = {"format": CHECKPOINT_FORMAT, "fingerprint": cfg.fingerprint()}
    exp_holder: dict[str, Experiment] = {}

    def evaluate(fed: Federation, final: bool) -> dict[str, float]:
        return evaluate_task(exp_holder["exp"], tstr=final)

    eval_cb = EvaluationCallback(
        evaluate,
        cfg.eval.every,
        run_dir / "samples",
        cfg.eval.grid_per_class,
        cfg.seed,
        final=cfg.eval.final,
        model=cfg.eval.model,
        tstr_every=cfg.eval.tstr_every,
        best_of=cfg.eval.best_of,
    )
    ledger_cb = LedgerCallback(run_dir, cfg.fingerprint(), ckpt_dir)
    callbacks: list[Callback] = [
        eval_cb,
        # The round's entries and signed head go in before the checkpoint that anchors them.
        ledger_cb,
        CheckpointCallback(
            ckpt_dir,
            cfg.checkpoint.every,
            cfg.checkpoint.keep,
            meta,
            on_written=ledger_cb.log_checkpoint,
        ),
        # The round's samples leave once the checkpoint that ends it is written.
        PublishSamples(eval_cb),
        MetricsWriter(run_dir / "metrics.jsonl"),
        ProgressCallback(
            cfg.name + (" (centralized)" if cfg.federation.centralized else ""), enabled=progress
        ),
    ]
    if cfg.tensorboard:  # after PublishSamples, which puts the grids it logs in samples/
        from fedgen.engine.tensorboard_callback import TensorBoardCallback

        callbacks.append(TensorBoardCallback(run_dir / "tensorboard", run_dir / "samples"))
    # Loads data first: a missing set fails here. A resume's checkpoint replaces the
    # starting weights, so their source need not be there any more.
    exp = build_experiment(cfg, callbacks, start_weights=not resume)
    from fedgen.assembly.privacy import replay_problems

    privacy = exp.federation.privacy
    unit = "client" if exp.federation.withholds_cohort else "example"
    if privacy is not None and (found := replay_problems(cfg.checkpoint.every, unit)):
        raise PrivacyConfigError(found, header="invalid experiment")
    exp_holder["exp"] = exp
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    if not hold.held:
        holds.enter_context(hold)
        # Made by another run while the data loaded? It cannot be started over.
        _check_run_folder(run_dir, cfg, resume)
    if resume:
        restore_latest(exp.federation, ckpt_dir, cfg)
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        _set_aside_ledger(run_dir)
    audit = exp.federation.audit
    if audit is not None:  # a copy of the folder would extend the same run id's log
        holds.enter_context(audit.store.hold(audit.run_id))
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    partition = exp.data.to_json()
    if exp.federation.privacy is not None:
        # Each client's label counts and size are functions of its data, which the DP
        # guarantee does not cover (the simulation knows them; a server would not).
        partition = {k: v for k, v in partition.items() if k not in WITHHELD_UNDER_DP}
        partition["withheld"] = "each client's label counts and size (differential privacy)"
    write_text_atomic(run_dir / "partition.json", json.dumps(partition, indent=1))
    if cfg.attack is not None:  # who the simulated attackers are
        from fedgen.assembly.attack import choose_attackers

        ids = [c.client_id for c in exp.data.clients]
        chosen = sorted(choose_attackers(ids, cfg.attack.fraction, cfg.seed))
        record = {"kind": cfg.attack.kind, "params": cfg.attack.params, "clients": chosen}
        (run_dir / "attackers.json").write_text(json.dumps(record, indent=1))
    if on_ready is not None:
        on_ready(exp)
    # A resumed run's time adds its earlier parts' rounds (and their evaluations).
    earlier = exp.federation.history[: exp.federation.next_round]
    earlier_seconds = sum(m.get("seconds", 0.0) + m.get("eval_seconds", 0.0) for m in earlier)
    t0 = time.perf_counter()
    completed = exp.federation.run()
    summary = write_summary(exp, run_dir, completed, earlier_seconds + time.perf_counter() - t0)
    from fedgen.report.html import write_report

    write_report(run_dir)
    return summary


#: What ``partition.json`` leaves out of a run under differential privacy.
WITHHELD_UNDER_DP = frozenset({"counts", "domain_counts", "sizes"})


def _check_run_folder(run_dir: Path, cfg: ExperimentConfig, resume: bool) -> None:
    """Raise ``ConfigError`` when ``run_dir`` cannot take this run: a file, a folder
    holding another run's results (a new run would overwrite them), or, on resume, a
    change of whether the run keeps a ledger."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder; choose another --out")
    # A file on the way (``afile/run``) would fail only after the data had loaded.
    blocking = next((p for p in run_dir.absolute().parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(
            f"--out {run_dir} cannot be made: {blocking} is a file, not a folder; choose "
            "another --out"
        )
    if resume:
        kept = run_dir / "config.yaml"
        before = load_config(kept).ledger if kept.is_file() else cfg.ledger
        if before != cfg.ledger:
            raise ConfigError(
                f"{run_dir} was run with ledger={str(before).lower()}; a resume cannot turn "
                "its ledger on or off (its entries would no longer cover every round): "
                "resume without --set ledger=..."
            )
        return
    if list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(
            f"{run_dir} already holds a run; use --resume to continue it or "
            "--out to choose a new folder"
        )
    # Results of a run whose checkpoints are gone (deleted to save space, say) are
    # still results: only a folder without a finished round is started over.
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        raise ConfigError(
            f"{run_dir} holds another run's results ({metrics.name}, no checkpoints to "
            "resume from); choose another --out, or move them away to start over here"
        )
    # A run writes config.yaml, summary.json and report.html over what is there: only
    # its own, from a run that ended before its first round, may be replaced.
    foreign = _foreign_files(run_dir)
    if foreign:
        raise ConfigError(
            f"{run_dir} holds {', '.join(foreign)}, which a new run would overwrite; "
            "choose another --out, or move them away to start over here"
        )


def _foreign_files(run_dir: Path) -> list[str]:
    """Files in ``run_dir`` a new run would overwrite that are not a roundless run's own:
    a downstream run's results, a summary with finished rounds, a config.yaml that is no
    run recipe."""
    found = []
    if (run_dir / "downstream.json").exists():
        found.append("downstream.json (a downstream run's results)")
    rounds = _read_summary(run_dir / "summary.json").get("rounds")
    if (run_dir / "summary.json").exists() and rounds != 0:
        found.append("summary.json (another run's results)")
    kept = run_dir / "config.yaml"
    if kept.is_file():
        try:
            load_config(kept, validate_components=False)
        except (ConfigError, OSError, UnicodeDecodeError):
            found.append("config.yaml (not a fedgen run's recipe)")
    return found


def _set_aside_ledger(run_dir: Path) -> None:
    """A fresh run in a folder whose earlier run died before its first checkpoint.

    That run cannot be resumed, so its log is kept beside, renamed, never deleted,
    and the new run starts a new log.
    """
    ledger = run_dir / "ledger.sqlite"
    if not ledger.exists():
        return
    n = 1
    while (aside := run_dir / f"ledger.abandoned-{n}.sqlite").exists():
        n += 1
    ledger.rename(aside)
    journal = ledger.with_name(ledger.name + "-journal")
    if journal.exists():
        # Its rollback journal goes with it: SQLite would delete it when the new, empty
        # log opens, and the old log, cut mid-append, could then not be rolled back.
        journal.rename(aside.with_name(aside.name + "-journal"))
    log.warning("%s belonged to a run that never checkpointed; kept as %s", ledger, aside.name)


def restore_latest(
    fed: Federation, ckpt_dir: Path, cfg: ExperimentConfig, *, reading: bool = False
) -> int:
    """Load the newest intact checkpoint into ``fed``; return the round it was taken after.
    ``reading``: for ``fedgen sample``/``eval``, whose advice is not to resume.

    A corrupted or truncated newest checkpoint (a crash mid-write on a filesystem
    that does not honour the rename, a damaged disk) is skipped with a warning and
    the previous one is used; the rounds after it are trained again, except under
    client-level DP, where that is refused (they may have been released, and their noise
    would repeat). A checkpoint of another experiment is an error, never skipped.
    """
    found = list_checkpoints(ckpt_dir)
    if not found:
        if reading:
            raise CheckpointError(f"no checkpoint in {ckpt_dir}: the run saved no model yet")
        raise CheckpointError(f"no checkpoint in {ckpt_dir}; start the run without --resume")
    newest, damaged = newest_intact(found)
    if newest is None:
        what = (
            "so the run has no model to read; restore a checkpoint from a backup"
            if reading
            else "so the run cannot resume; start it again without --resume in a new --out folder"
        )
        raise CheckpointError(
            f"every checkpoint in {ckpt_dir} is damaged, {what}. Damage found:\n  "
            + "\n  ".join(damaged)
        )
    round_, path, payload, digest = newest
    # Intact bytes that do not fit this experiment are an error, never skipped.
    advice = (
        # fedgen sample/eval read the run's own config.yaml: if it does not fit, it was
        # edited after the run (or the checkpoints came from elsewhere).
        "the run folder's config.yaml is not the one this checkpoint was trained with; "
        "put back the config.yaml the run wrote (with a ledger, fedgen ledger verify "
        "checks it against the fingerprint the run signed)"
        if reading
        else RESUME_ADVICE
    )
    state = check_payload(
        payload, path, format=CHECKPOINT_FORMAT, fingerprint=cfg.fingerprints(), advice=advice
    )
    if damaged and not reading and fed.privacy is not None:
        # A damaged checkpoint's round was saved, so it may have been sent to the next
        # cohort. DP noise is keyed by the round (the server's under client-level DP,
        # each client's under DP-SGD): training it again would add the same noise to
        # other updates, and the two releases' difference would carry none.
        raise CheckpointError(
            f"under differential privacy (client-level DP or DP-SGD) the run cannot go "
            f"on from {path.name} (after round "
            f"{round_}): the newer checkpoint(s) are damaged, and their rounds may already "
            "have been released, so training them again would repeat their noise over other "
            "updates. Restore the damaged checkpoints from a backup, or start a new run "
            "(whose epsilon adds to this one's); deleting them, as the reasons below "
            "suggest for runs without DP, would not make the replay safe. "
            "Damage found:\n  " + "\n  ".join(damaged)
        )
    if damaged:
        log.warning(
            "resuming from %s (after round %d); %d newer checkpoint(s) were damaged "
            "and are ignored: those rounds are trained again",
            path.name,
            round_,
            len(damaged),
        )
    if reading and fed.audit is None:
        # Reading a ledger run built without its ledger (a folder received without the
        # key store, its config.yaml set to ledger: false): nothing is logged, so the
        # audit state is not needed. A resume keeps the refusal (its rounds would go
        # unlogged).
        state = {k: v for k, v in state.items() if k != "audit"}
    restore_state(fed, state, path, fed.task.private_state())
    fed.restored_digest = digest
    if fed.privacy is not None and cfg.noise_seed == "secret" and fed.noise_key is None:
        # A checkpoint from before noise keys were kept: its run drew its noise from the
        # root seed, and continues so (bit-identical), which the config does not say.
        log.warning(
            "%s holds no DP noise key: this run drew its noise from the root seed and goes "
            "on doing so, so it protects nobody who holds its config; start a new run for "
            "secret noise",
            path.name,
        )
    return round_


def write_summary(
    exp: Experiment, run_dir: Path, completed: bool, seconds: float
) -> dict[str, Any]:
    """Flat final figures: the last evaluation, totals, status, and what each figure means.

    ``seconds``: the wall time of every part of the run (a resumed part adds the earlier
    parts' rounds and evaluations).
    """
    fed = exp.federation
    history = fed.history
    # What an earlier part of the run said that this part cannot (it evaluated nothing).
    previous = _read_summary(run_dir / "summary.json")
    # The federation says why it stopped: the budget, or failed rounds.
    status = (fed.stop_status or "completed") if completed else "interrupted"
    summary: dict[str, Any] = {
        "status": status,
        "rounds": fed.next_round,
        "mode": "centralized" if exp.config.federation.centralized else "federated",
        "task": exp.config.task.name,
        "sources": exp.config.data.sources,
        "num_clients": len(fed.clients),
        "seconds": seconds,
        "bytes_up": sum(m.get("bytes_up", 0) for m in history),
        "bytes_down": sum(m.get("bytes_down", 0) for m in history),
        # Everything the run's messages carried, up and down, as encoded on a wire.
        "bytes_total": sum(m.get("bytes_up", 0) + m.get("bytes_down", 0) for m in history),
        "failures": sum(m.get("failures", 0) for m in history),
        "failed_rounds": sum("round_failed" in m for m in history),
        **_withheld(fed),
        "parameters": sum(exp.task.num_parameters().values()),
    }
    # Rounds the evaluation callback measured (it times itself), whatever the modality.
    evaluated = [m for m in history if "eval_seconds" in m]
    if evaluated:
        last = evaluated[-1]
        summary["evaluated_round"] = last["round"]
        summary.update(
            {
                k: v
                for k, v in last.items()
                if k in _FIGURES
                or k.startswith(("tstr_", "client_tstr_", "client_frechet_"))
                # The union of the clients' own models (fedgen.engine.table_union,
                # fedgen.engine.image_union).
                or k.endswith(("_union_personal", "_union_finetuned"))
            }
        )
    if fed.stop_reason is not None:
        summary["stop_reason"] = fed.stop_reason
        summary["planned_rounds"] = fed.rounds
    descriptions: dict[str, str] = {}
    if fed.privacy is not None:
        summary.update(fed.privacy.describe())
        # root: anyone holding config.yaml can regenerate the noise; the report says so.
        # What the run drew with (a resumed old run may hold no key despite its config).
        summary["noise_seed"] = "root" if fed.noise_key is None else "secret"
        descriptions.update(_privacy_descriptions(fed.privacy.unit))
    if exp.evaluator is not None:
        descriptions.update(exp.evaluator.describe())
        from fedgen.assembly.personalization import evaluated_model, per_client_descriptions

        # Which model the global figures are of (private tensors: at their initial values).
        # evaluated_client names only a client whose private state the server holds (none
        # on Flower, where the nodes keep theirs).
        if exp.config.eval.model == UNION:
            summary["evaluated_model"] = describe_union_model(union_holders(fed))
        else:
            client = evaluated_client(fed, exp.config.eval.model)
            summary["evaluated_model"] = evaluated_model(exp.task, client, fed)
        if exp.config.eval.per_client or exp.config.eval.union:
            descriptions.update(per_client_descriptions(exp.config, exp.task.modality))
    elif evaluated and previous.get("evaluated_round") == summary.get("evaluated_round"):
        # A resumed part that evaluated nothing (a finished run resumed, or eval.final
        # off): the figures are the earlier part's, and so is what they were computed on.
        if isinstance(previous.get("evaluated_model"), str):
            summary["evaluated_model"] = previous["evaluated_model"]
        if isinstance(previous.get("descriptions"), dict):
            descriptions = {**previous["descriptions"], **descriptions}
    if descriptions:
        summary["descriptions"] = descriptions
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def _read_summary(path: Path) -> dict[str, Any]:
    """An earlier part's ``summary.json``, or {} (none yet, or unreadable)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _withheld(fed: Federation) -> dict[str, Any]:
    """Under client-level DP, totals that would reveal the cohorts are withheld too."""
    if not fed.withholds_cohort:
        return {}
    return {
        # The run's time follows the cohorts' sizes, as its per-round seconds (withheld).
        "seconds": None,
        "bytes_up": None,
        "bytes_down": None,
        "bytes_total": None,
        "failures": None,
        "failed_rounds": None,
        "cohort_metrics": "withheld: client-level DP assumes the sampled cohort stays "
        "secret, so per-round clients, failures, examples and bytes are not recorded",
    }


def _privacy_descriptions(unit: str) -> dict[str, str]:
    who = "a whole client's data" if unit == "client" else "any one training example"
    return {
        "epsilon": f"(epsilon, delta)-DP spent by the rounds run, protecting {who}; from "
        "Opacus's accountant (sample level: the largest over clients). Clients' per-round "
        "losses and update norms stay on the clients. TSTR (generated images, the public "
        "test split) is post-processing; figures that also read the clients' data are not "
        "covered: the Frechet distance, KID, precision/recall and IS-like score (their "
        "feature classifier is trained on the pooled training split the clients hold) "
        "and a text task's held-out perplexity",
        "delta": "the delta of the guarantee",
    }


_FIGURES = (
    "perplexity",
    "perplexity_worst_decile",
    "perplexity_pooled",
    "perplexity_personal",
    "perplexity_personal_worst_decile",
    "perplexity_personal_pooled",
    "perplexity_personalized",
    "perplexity_personalized_worst_decile",
    "perplexity_personalized_pooled",
    "frechet_distance",
    "kid",
    "kid_std",
    "inception_like_score",
    "inception_like_score_std",
    "precision",
    "recall",
    "real_test_accuracy",
    # Tables (fedgen.eval.table_quality).
    "quality_score",
    "column_shapes",
    "column_pair_trends",
    "ml_efficacy",
    "ml_efficacy_std",
    "ml_efficacy_real",
    "ml_efficacy_ratio",
    "dcr_synthetic_train",
    "dcr_holdout_train",
    "dcr_closer_to_train",
    # Sampling cost of tasks that time their own sampling (ddpm: Task.sampling_cost).
    "sample_seconds_per_1000",
    "ddim_steps",
    "ddpm_timesteps",
    "guidance_scale",
)


def load_run(run_dir: str | Path) -> Experiment:
    """Rebuild a run folder's experiment with the newest checkpoint loaded (for sample/eval)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = load_config(cfg_path, validate_components=False)
    exp = build_experiment(cfg, start_weights=False)  # the checkpoint replaces them
    restore_latest(exp.federation, run_dir / "checkpoints", cfg, reading=True)
    return exp


__all__ = ["build_experiment", "load_config", "load_run", "run_experiment"]
