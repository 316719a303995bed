"""Typed experiment config: YAML recipes, dotted overrides, errors that name the key.

A recipe is validated as a whole before round 1. Unknown keys and wrong
types raise ``ConfigError`` naming the dotted key and the allowed keys or
values, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedgen.errors import ConfigError
from fedgen.params import ParamsError, explain


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # Pydantic reads true as 1 for an int: `--set federation.rounds=true` ran one
        # round without a word. A boolean where a number belongs is a mistake.
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, bool) and _is_number(field.annotation):
                    raise ValueError(f"{name}={str(value).lower()} is a boolean; give a number")
        return data


def _is_number(annotation: Any) -> bool:
    """Whether a field's type is int or float (or an optional or union of them)."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return any(a in (int, float) for a in args) and bool not in args


class PartitionConfig(_Strict):
    """How the training split is divided among clients (see ``fedgen.data.partition``)."""

    kind: str = "dirichlet"
    params: dict[str, Any] = Field(default_factory=lambda: {"alpha": 0.5})

    @model_validator(mode="before")
    @classmethod
    def _params_of_the_kind(cls, data: Any) -> Any:
        # The default params are the default kind's: a recipe that names another kind
        # without params gets that kind's own defaults, not Dirichlet's alpha (which
        # every other partitioner refuses as an unknown key).
        if isinstance(data, dict) and "params" not in data:
            data = {
                **data,
                "params": {"alpha": 0.5} if data.get("kind") in (None, "dirichlet") else {},
            }
        return data


class DataConfig(_Strict):
    """Which real data, where it lives, and how many clients share it."""

    sources: list[str] = Field(default=["fashion-mnist"], min_length=1)
    data_dir: str | None = None
    num_clients: int = Field(10, ge=1)
    partition: PartitionConfig = PartitionConfig()


class TaskConfig(_Strict):
    """Which generative model; ``params`` are validated by the task's own model."""

    name: str = "cgan"
    params: dict[str, Any] = Field(default_factory=dict)


class ComponentConfig(_Strict):
    """A registered component by name, with constructor parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class StrategyConfig(ComponentConfig):
    """The server strategy (default FedAvg, 40% of clients per round, EMA for sampling)."""

    name: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=lambda: {"fraction": 0.4, "ema_decay": 0.9})


class BackendConfig(ComponentConfig):
    """How client work is executed (default: one worker process per core)."""

    name: str = "process_pool"


class ClockConfig(_Strict):
    """The simulated clock: each client's compute time per local step (no sleeping).

    ``speeds``: ``equal`` (every client 1 / ``seconds_per_step``), ``lognormal``
    (heavy-tailed: a client's step time is ``seconds_per_step * exp(sigma * z)``,
    z drawn once per client from the root seed) or ``profiles`` (the HuSCF device
    profiles, step time inversely proportional to a device's FLOP/s, relative to the
    median device). ``jitter`` multiplies each job's time by ``exp(jitter * z)``.
    """

    speeds: Literal["equal", "lognormal", "profiles"] = "equal"
    sigma: float = Field(1.0, ge=0, allow_inf_nan=False)
    jitter: float = Field(0.0, ge=0, allow_inf_nan=False)
    seconds_per_step: float = Field(1.0, gt=0, allow_inf_nan=False)


class FedBuffConfig(_Strict):
    """FedBuff (Nguyen et al. 2022): a server step every ``buffer_size`` arrivals.

    ``concurrency`` clients train at once (null: every client); an update ``s``
    server steps stale is weighted ``1 / (1 + s) ** staleness_exponent``. The server
    learning rate is the strategy's (``strategy.params.server_lr``).
    """

    buffer_size: int = Field(4, ge=1)
    staleness_exponent: float = Field(0.5, ge=0, allow_inf_nan=False)
    concurrency: int | None = Field(None, ge=1)
    #: ``simulated``: arrivals in the order of ``federation.clock`` (reproducible);
    #: ``wall``: in the order results really arrive from a backend that keeps jobs in
    #: flight (process_pool, flower): real asynchrony, not reproducible by nature.
    timing: Literal["simulated", "wall"] = "simulated"


class GossipConfig(_Strict):
    """Gossip averaging (D-PSGD, Lian et al. 2017): no server, neighbours average.

    ``degree`` is used by ``topology: regular`` only (a random d-regular graph drawn
    from the root seed).
    """

    topology: Literal["ring", "regular", "complete"] = "ring"
    degree: int = Field(3, ge=1)
    weights: Literal["metropolis", "uniform"] = "metropolis"


class FederationConfig(_Strict):
    """The round loop: how many rounds, how much local work, what counts as malformed.

    ``mode`` is the schedule the loop runs: ``sync`` (a cohort per round),
    ``fedbuff`` (a round is one buffered asynchronous server step) or ``gossip`` (a
    round is one local step and one neighbour averaging on every client). Only the
    chosen mode's section (``fedbuff`` / ``gossip``) may be set; ``clock`` gives
    every mode a simulated time (``sim_time`` in the metrics).
    """

    rounds: int = Field(60, ge=1)
    local_steps: int | None = Field(30, ge=1)
    local_epochs: float | None = Field(None, gt=0)
    max_update_norm: float | None = Field(1e4, gt=0)
    #: Stop the run (status ``failed``) after this many rounds in a row in which no
    #: client update could be used (NaN, oversized, crashed): the model has stopped
    #: moving. None: never stop for that.
    max_failed_rounds: int | None = Field(10, ge=1)
    centralized: bool = False
    mode: Literal["sync", "fedbuff", "gossip"] = "sync"
    clock: ClockConfig | None = None
    fedbuff: FedBuffConfig | None = None
    gossip: GossipConfig | None = None
    #: Compress the broadcast model with this codec (``quantize``, ``qsgd``, ``cast``,
    #: ``topk``, ``random_mask``): each client receives deltas from the model it last
    #: saw (``fedgen.engine.downlink``). None: every client receives the float32 model.
    downlink: ComponentConfig | None = None
    #: Start from another run's global model instead of fresh weights: its run folder
    #: (the newest intact checkpoint) or one checkpoint file, of the same task and
    #: architecture (``fedgen.engine.initial_weights``); e.g. a model pretrained on public
    #: data, fine-tuned under DP. None: weights drawn from the seed.
    init_from: str | None = None

    @model_validator(mode="after")
    def _one_local_budget(self) -> FederationConfig:
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError(
                "set exactly one of federation.local_steps and "
                "federation.local_epochs (set the other to null)"
            )
        for section in ("fedbuff", "gossip"):
            if getattr(self, section) is not None and self.mode != section:
                raise ValueError(
                    f"federation.{section} is set but federation.mode is {self.mode!r}; "
                    f"set federation.mode={section} or remove federation.{section}"
                )
        if self.mode != "sync" and self.centralized:
            raise ValueError(
                f"federation.centralized=true trains one model; it has no {self.mode} "
                "schedule: set federation.mode=sync"
            )
        return self


class EvalConfig(_Strict):
    """When and how generation quality is measured."""

    every: int = Field(10, ge=0)
    final: bool = True
    #: Every this many rounds, the evaluation also computes the figures otherwise kept
    #: for the final one (TSTR; tables: DCR; with ``per_client``: per-client figures), so
    #: a long run records its downstream curve. 0: only at the end.
    tstr_every: int = Field(0, ge=0)
    num_quality_samples: int = Field(2000, ge=10)
    tstr_samples: int = Field(30000, ge=10)
    tstr_epochs: int = Field(3, ge=1)
    #: Images and tables: the final TSTR repeated on this many synthetic draws (images:
    #: each with its own classifier seed; tables' gradient-boosted classifier is
    #: deterministic); the figures are their means, ``*_std`` their spread, so a gap of a
    #: few points can be told from the measurement's own noise.
    tstr_repeats: int = Field(1, ge=1, le=100)
    classifier_epochs: int = Field(1, ge=1)
    grid_per_class: int = Field(10, ge=1)
    #: After the last round, fine-tune the final model this many steps on each client's
    #: own data and report the fine-tuned per-client figures (text: held-out perplexity;
    #: images with ``per_client``: per-client TSTR and Frechet distance). 0: don't.
    personalize_steps: int = Field(0, ge=0)
    #: Images: after the last round, per-client TSTR and Frechet distance on each client's
    #: own label distribution, of the global model and of each client's own (personal,
    #: fine-tuned) model, as mean and worst decile over clients (``fedgen.eval.per_client``).
    per_client: bool = False
    #: Samples per client and model for the per-client figures.
    per_client_samples: int = Field(2000, ge=10)
    #: After the last round, also measure the union of the clients' own models (personal
    #: blocks, Ditto, or fine-tuned with ``personalize_steps``) as the run's release:
    #: images, each class drawn from the clients holding it in proportion to their
    #: examples of it (``fedgen.engine.image_union``); tables, each client's share of the
    #: rows (``fedgen.engine.table_union``, which ``per_client`` measures for tables too).
    union: bool = False
    #: Which model the run's own evaluations and sample grids show when clients keep
    #: private tensors (FedPer layers, partial FedDiffuse blocks): ``largest_client``, the
    #: own model of the client with the most examples; ``global``, the federated tensors
    #: with the private ones at their initial values (a model no client holds); ``union``,
    #: class-conditional images of each class from the own models of the clients holding
    #: it, by their examples of it (``fedgen.engine.image_union``: how a partial scheme's
    #: clients would release their data, refused under DP); ``auto``, the largest client
    #: except under DP (``fedgen.engine.client_models.evaluated_client``). Each evaluated
    #: round records its choice (``metrics.jsonl``'s ``evaluated_model``), and ``fedgen
    #: sample``/``eval`` and the downstream generator follow it by default.
    model: Literal["auto", "global", "largest_client", "union"] = "auto"
    #: Conditional GANs: each image the evaluations, sample grids and ``fedgen sample``
    #: draw is the best of this many generator draws by the released discriminator's
    #: score (``fedgen.tasks.best_of``): post-processing, free under DP. 1: plain draws.
    #: Per-client and union figures, the downstream generator and the attacks' samples
    #: draw plainly.
    best_of: int = Field(1, ge=1, le=64)


class CheckpointConfig(_Strict):
    """How often the federation state is saved, and how many checkpoints are kept."""

    every: int = Field(1, ge=1)
    keep: int = Field(2, ge=1)


class DpSgdConfig(_Strict):
    """Sample-level DP-SGD (Opacus) in every client's local training.

    Give ``noise_multiplier``, or ``epsilon`` to have it calibrated for the planned
    rounds (for the client with the highest sampling rate), or both. Values are
    checked with the rest of the experiment before round 1
    (``fedgen.assembly.privacy``), so every problem is reported at once.
    """

    noise_multiplier: float | None = None
    epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float | None = None
    accountant: str = "rdp"
    #: Rounds each client may take part in. With ``epsilon``, the noise is calibrated
    #: for this many rounds instead of every planned one, and a client that has used
    #: them sits out the rest of the run (the run stops when none is left). With a
    #: fraction of the clients per round, each takes part in only some rounds, so the
    #: default (every round) leaves budget unspent; a cap spends it as less noise. The
    #: strategy's fraction then applies to the clients with rounds left, so late cohorts
    #: shrink; the run also stops when too few are left for ``min_clients``.
    rounds_per_client: int | None = Field(None, ge=1)
    #: With ``epsilon``: calibrate each client's sigma for its own sampling rate and
    #: steps, as Opacus's ``make_private_with_epsilon`` does on each client's own data,
    #: instead of one sigma for the client with the highest rate. Every example keeps the
    #: same (epsilon, delta); a client holding more examples samples each one less often
    #: and so adds less noise. The sigma then tells a client's shard size to the server
    #: roughly, as FedAvg's example-count weights already do.
    noise_per_client: bool = False


class FaultsConfig(_Strict):
    """Faults injected into the simulation, to test that a run survives them.

    Each sampled client draws at most one fault per round, with these
    probabilities, from its own round seed: the same clients fail in the same
    way in a resumed run as in an uninterrupted one. ``straggle`` sleeps for
    ``straggle_seconds`` before training (a failure once it passes the backend's
    ``client_timeout``); ``nan``, ``wrong_shape`` and ``oversized`` corrupt the
    update the client returns (a NaN, one tensor of the wrong shape, a norm
    past ``federation.max_update_norm``), which the server must reject.
    """

    crash_before: float = Field(0.0, ge=0, le=1)
    crash_after: float = Field(0.0, ge=0, le=1)
    straggle: float = Field(0.0, ge=0, le=1)
    straggle_seconds: float = Field(5.0, gt=0)
    nan: float = Field(0.0, ge=0, le=1)
    wrong_shape: float = Field(0.0, ge=0, le=1)
    oversized: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _at_most_one(self) -> FaultsConfig:
        total = sum(getattr(self, k) for k in FAULT_KINDS)
        if total > 1 + 1e-9:
            raise ValueError(
                f"fault probabilities add up to {total:g}; a client draws at most one "
                "fault per round, so keep their sum <= 1"
            )
        return self


class AttackConfig(_Strict):
    """Simulated malicious clients (``fedgen.assembly.attack``): ``fraction`` of the
    clients, chosen by the root seed and written to the run folder's ``attackers.json``,
    run the registered adversary ``kind`` with ``params`` (e.g. ``sign_flip``,
    ``scaling``, ``label_flip``, ``gaussian``, ``free_rider``, ``mode_collapse``,
    ``backdoor``)."""

    kind: str
    fraction: float = Field(0.2, ge=0, le=1)
    params: dict[str, Any] = Field(default_factory=dict)


class DetectionConfig(_Strict):
    """A detection stage before aggregation (``fedgen.strategies.detection``): clients
    whose update norm, cosine to the median update or reported losses lie more than
    ``threshold`` robust standard deviations out are flagged in the round's metrics;
    ``exclude`` also leaves them out of the aggregate."""

    threshold: float = Field(3.5, gt=0)
    exclude: bool = False


#: The arms of a downstream comparison (see ``DownstreamConfig``).
DownstreamMode = Literal[
    "real", "topup", "server_finetune", "synthetic", "one_shot", "one_shot_finetune"
]
DOWNSTREAM_MODES: tuple[DownstreamMode, ...] = (
    "real",
    "topup",
    "server_finetune",
    "synthetic",
    "one_shot",
    "one_shot_finetune",
)


class DownstreamConfig(_Strict):
    """A federated classifier trained with the experiment's generator (``fedgen.downstream``).

    ``modes``: ``real`` (FedAvg on real data only), ``topup`` (each client tops up its
    under-represented classes with synthetic samples first, as GeFL), ``server_finetune``
    (the server fine-tunes the global classifier on synthetic data after every round),
    ``synthetic`` (the server trains it on synthetic data alone: the arm that inherits
    the generator's DP), ``one_shot`` (FedCVAE-Ens: each client sends a conditional
    generator once) and ``one_shot_finetune`` (FedAvg on real data, the server
    fine-tuning after every round on samples of those one-shot generators: the
    generator-assisted arm whose generator is the clients' ensemble, not the federated
    one).
    ``generator_run`` reuses a finished generator run folder instead of training one.
    ``generator_model`` is the generator's model the samples come from: ``run``, the one
    its own evaluations showed (its ``eval.model``: with private tensors, the largest
    client's own model), ``global`` or ``largest_client`` (as ``fedgen sample --model``).
    ``topup_ratio`` r tops every class of a client up to r times its largest class
    (capped at ``topup_max_per_class``); 0 adds nothing, 1 balances the shard.
    """

    generator_run: str | None = None
    generator_model: Literal["run", "global", "largest_client"] = "run"
    modes: list[DownstreamMode] = Field(default_factory=lambda: list(DOWNSTREAM_MODES))
    #: The classes the classifier is for; null: the data's. Must equal the generator's.
    classes: list[str] | None = None
    rounds: int = Field(20, ge=1)
    local_steps: int = Field(20, ge=1)
    fraction: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    topup_ratio: float = 1.0
    topup_max_per_class: int = Field(1000, ge=0)
    server_steps: int = Field(50, ge=0)
    server_samples_per_class: int = Field(500, ge=1)
    one_shot_task: Literal["cvae", "cgan"] = "cvae"
    one_shot_steps: int = Field(300, ge=1)
    one_shot_samples: int = Field(20000, ge=10)
    #: Epochs of the server's classifier on synthetic data (arms synthetic and one_shot).
    server_epochs: int = Field(3, ge=1)
    eval_every: int = Field(0, ge=0)
    #: The classifier federation's strategy (null: FedAvg over ``fraction`` of the
    #: clients) and update transforms (clip, client_dp, codecs, secagg), as the
    #: generator's ``strategy`` and ``transforms``.
    strategy: ComponentConfig | None = None
    transforms: list[ComponentConfig] = Field(default_factory=list)
    #: Test images every arm is scored on (a seeded subset; null: the whole test split)
    #: and members/non-members each membership attack scores.
    test_examples: int | None = Field(None, ge=10)
    attack_candidates: int = Field(1000, ge=10)

    @model_validator(mode="after")
    def _ratio_in_range(self) -> DownstreamConfig:
        tuned = [m for m in ("server_finetune", "one_shot_finetune") if m in self.modes]
        if self.server_steps == 0 and tuned:
            # The arm would be real-only FedAvg reported under another name and costs.
            raise ValueError(
                f"downstream.server_steps is 0, so arm {tuned[0]} would never fine-tune "
                "(it would be the real arm under another name); give server_steps >= 1 "
                "or drop it from downstream.modes"
            )
        if not 0.0 <= self.topup_ratio <= 1.0:
            raise ValueError(
                f"downstream.topup_ratio is {self.topup_ratio:g}, outside [0, 1]: it is the "
                "share of a client's largest class every class is topped up to (0: none, "
                "1: balanced); give a value in [0, 1]"
            )
        return self


#: The fault kinds of ``FaultsConfig``, in the order a client's draw is matched.
FAULT_KINDS = ("crash_before", "crash_after", "straggle", "nan", "wrong_shape", "oversized")


class ExperimentConfig(_Strict):
    """One experiment: data, task, strategy, transforms, backend, loop, evaluation."""

    name: str = "fmnist-cgan-dirichlet0.5"
    seed: int = 0
    data: DataConfig = DataConfig()

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, name: str) -> str:
        # The run folder's default name (runs/<name>): '../x' would leave runs/.
        bad = not name or name.startswith(".") or any(c in name for c in "/\\\0")
        if bad or len(name) > 120:
            raise ValueError(
                f"name={name[:40]!r} names the run folder (runs/<name>): give one folder "
                "name of 1-120 characters, without '/' or '\\', not starting with '.'"
            )
        return name

    task: TaskConfig = TaskConfig()
    strategy: StrategyConfig = StrategyConfig()
    transforms: list[ComponentConfig] = Field(default_factory=list)
    backend: BackendConfig = BackendConfig()
    federation: FederationConfig = FederationConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    dpsgd: DpSgdConfig | None = None
    faults: FaultsConfig | None = None
    attack: AttackConfig | None = None
    detection: DetectionConfig | None = None
    downstream: DownstreamConfig | None = None
    ledger: bool = Field(
        True,
        description="keep ledger.sqlite, the signed, tamper-evident log of every round "
        "(fedgen ledger verify RUN checks it)",
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (None: default)")
    tensorboard: bool = Field(
        False,
        description="write TensorBoard event files to RUN/tensorboard/ while the run goes: "
        "each round's metrics as scalars, each evaluation's samples as images "
        "(needs fedgen[tensorboard]; watch with tensorboard --logdir RUN)",
    )
    noise_seed: Literal["secret", "root"] = Field(
        "secret",
        description="what seeds DP noise and the vertical clients' shared draws: a secret "
        "key drawn at run start and kept in checkpoints only (secret), or the root seed "
        "(root: reruns from the config alone are identical, but anyone with the config "
        "can regenerate them)",
    )

    def to_yaml(self) -> str:
        return yaml.dump(self.model_dump(mode="json"), Dumper=RecipeDumper, sort_keys=False)

    @property
    def uses_dp(self) -> bool:
        """True when any differential privacy applies: DP-SGD or client-level ``client_dp``."""
        return self.dpsgd is not None or any(t.name == "client_dp" for t in self.transforms)

    def fingerprint(self) -> str:
        """Hash of everything that shapes the trained weights (not rounds, eval, logging,
        nor where the data sets lie: their files are checked by checksum).

        A checkpoint from a run with another fingerprint cannot be resumed.
        """
        return self._fingerprint(with_data_dir=False)

    def fingerprints(self) -> tuple[str, ...]:
        """Every fingerprint a checkpoint or ledger of this config may carry: the current
        one, and for a config that names ``data.data_dir`` the one from before 2026-12-07,
        which hashed that folder too (such runs resume where their data was)."""
        if self.data.data_dir is None:
            return (self.fingerprint(),)
        return (self.fingerprint(), self._fingerprint(with_data_dir=True))

    def _fingerprint(self, with_data_dir: bool) -> str:
        d = self.model_dump(mode="json")
        if not with_data_dir:
            # Where the data lies moves with the machine; a run copied elsewhere goes on.
            # (Hashed as unset, the default experiment's fingerprint is unchanged.)
            d["data"]["data_dir"] = None
        for key in ("eval", "checkpoint", "name", "ledger", "tensorboard"):
            d.pop(key)  # (tensorboard: watching a run does not change its weights)
        # How long to go on (and when failures end a run) never changes a round's weights.
        d["federation"].pop("rounds")
        d["federation"].pop("max_failed_rounds")
        if d.get("dpsgd") is None:
            d.pop("dpsgd", None)  # runs from before DP-SGD existed keep their fingerprint
        else:
            if d["dpsgd"].get("rounds_per_client") is None:
                d["dpsgd"].pop("rounds_per_client", None)  # likewise runs from before the cap
            if not d["dpsgd"].get("noise_per_client"):
                d["dpsgd"].pop("noise_per_client", None)  # and from before per-client sigma
        if d.get("faults") is None:
            d.pop("faults", None)  # runs from before fault injection keep their fingerprint
        for key in ("attack", "detection"):
            if d.get(key) is None:
                d.pop(key, None)  # likewise runs from before attacks and detection
        # The downstream classifier is trained after the generator and never changes it.
        d.pop("downstream", None)
        fed = d["federation"]
        if fed["mode"] == "sync" and fed["clock"] is None:
            # Runs from before asynchronous and gossip modes keep their fingerprint.
            for key in ("mode", "clock", "fedbuff", "gossip"):
                fed.pop(key)
        if fed.get("downlink") is None:
            fed.pop("downlink", None)  # runs from before downlink compression
        if fed.get("init_from") is None:
            fed.pop("init_from", None)  # and runs that start from fresh weights
        if isinstance(fed.get("fedbuff"), dict) and fed["fedbuff"].get("timing") == "simulated":
            fed["fedbuff"].pop("timing")  # FedBuff runs from before wall-clock timing
        if d.get("noise_seed") == "secret":
            d.pop("noise_seed")  # likewise runs from before the noise key existed
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# -- loading -------------------------------------------------------------------


#: Deepest nesting and most values a config may hold. A recipe is a few levels deep;
#: the limits stop recursive or endlessly repeated YAML anchors (``&a [*a]``).
MAX_DEPTH = 32
MAX_VALUES = 100_000
#: Integers a config may hold: every seed and count fits in 64 bits.
MAX_INT = 2**64

#: Exponent floats YAML 1.2 reads as numbers and PyYAML's YAML 1.1 as text: 1e-3, 2.5E4.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


_MERGE_TAG = "tag:yaml.org,2002:merge"


class RecipeLoader(yaml.SafeLoader):
    """How recipes and ``--set`` values are read: YAML's safe loader, with two YAML 1.2 rules.

    ``1e-3`` and ``2.5E4`` are floats (YAML 1.1, which PyYAML follows, wants ``1.0e-3``
    and reads ``1e-3`` as text), and ``2024-05-01`` stays text (no implicit dates: no
    setting takes one). Everything else is YAML 1.1: ``5`` an int, ``0.5`` a float,
    ``true``/``false``/``null``, ``[a, b]`` a list, ``{k: v}`` a mapping. Quote a value
    to keep it text: ``name='1e-3'``. A key given twice in one mapping is an error
    (PyYAML would keep the last silently, and a second ``federation:`` section would
    drop the first one's settings to their defaults).
    """

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        # Checked as written, before any ``<<:`` merge is flattened into a mapping (a
        # merged key and the one beside it that overrides it are no duplicate).
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.composer.ComposerError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key_node.value!r} twice; merge the two into one",
                    key_node.start_mark,
                )
            seen.add(key)
        return node


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789.")
)


class RecipeDumper(yaml.SafeDumper):
    """Writes configs so that ``RecipeLoader`` and ``yaml.safe_load`` read them back alike.

    Text that either would take for a number or a date (``'1e-3'``, ``'2024-05-01'``)
    is quoted.
    """


RecipeDumper.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789.")
)


def read_yaml(text: str, what: str) -> Any:
    """``text`` as ``RecipeLoader`` reads it; ``ConfigError`` naming ``what`` on any failure."""
    try:
        return yaml.load(text, Loader=RecipeLoader)
    # PyYAML raises YAMLError, but also ValueError/KeyError from its scalar constructors
    # (``!!int x``, ``!!bool 3``) and RecursionError on deep nesting: all mean bad input.
    except Exception as exc:
        raise ConfigError(f"{what} is not valid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: Exception) -> str:
    """One line: what PyYAML found wrong and where."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        problem = exc.problem or exc.context or "malformed"
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(exc, RecursionError):
        return "nested too deeply to parse"
    return " ".join(str(exc).split()) or type(exc).__name__


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    validate_components: bool = True,
) -> ExperimentConfig:
    """Read a YAML recipe (or, without one, the default experiment: the fields' defaults
    completed by ``fill_default_experiment``), apply ``key.sub=value`` overrides, validate.

    Raises ``ConfigError``, and nothing else, for any recipe or override: it names the
    file or the key at fault.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            found = p.is_file()
            text = p.read_text(encoding="utf-8") if found else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {p} as UTF-8 text: {exc}") from None
        if not found and (p / "config.yaml").is_file():
            raise ConfigError(
                f"{p} is a run folder, not a recipe: continue it with fedgen run --resume "
                f"{p}, or start a new run from its recipe, {p / 'config.yaml'}"
            )
        if not found:
            raise ConfigError(f"config file {p} does not exist; recipes live in configs/")
        loaded = read_yaml(text, str(p))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p} must hold a mapping of keys, got {type(loaded).__name__}")
        raw = loaded or {}
    for item in overrides or []:
        apply_override(raw, item)
    if path is None:
        fill_default_experiment(raw)
    cfg = parse_config(raw)
    if validate_components:
        validate_components_of(cfg)
    return cfg


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``dotted.key=value`` override to ``raw`` in place.

    The value is read as a recipe is (``RecipeLoader``): ``5`` an int, ``0.5`` and
    ``1e-3`` floats, ``true``/``null``, ``[a, b]``, ``{k: v}``, other words text; quote
    it to keep it text. An empty value is null. A number in the key indexes a list
    (``transforms.0.params.max_norm=2``); missing sections on the way are created.
    """
    key, sep, text = item.partition("=")
    parts = key.split(".")
    if not sep or not all(part.strip() for part in parts):
        raise ConfigError(
            f"override {item!r} must look like dotted.key=value, e.g. federation.rounds=5"
        )
    value = read_yaml(text, f"override {item!r}: the value of {key}") if text.strip() else None
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not (part.isascii() and part.isdecimal() and int(part) < len(node)):
                raise ConfigError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])} is not an item of the "
                    f"{len(node)}-item list {'.'.join(parts[:i])}; index it with "
                    f"0..{len(node) - 1}"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(
                f"override {item!r}: {'.'.join(parts[:i])} is {_short(node)}, not a section"
            )


#: What the default experiment (no recipe: ``fedgen run``; ``configs/fmnist_cgan.yaml``)
#: sets beyond the fields' defaults. Its cGAN clients read their examples in 120 steps of
#: 16 a round, not 30 of 64: the same examples in four times the sequential steps. At
#: equal CPU time that gave TSTR 0.770 over three seeds against 0.744 over two (+2.1 and
#: +3.2 points paired) and recall 0.43-0.61 against 0.36-0.37
#: (benchmarks/results/default_recipe.md, 2026-12-04). The fields
#: keep 30 steps of 64, so a recipe that omits them means what it meant before. Its 100
#: rounds (the fields: 60) gave a five-seed mean TSTR of 0.801, against 0.795 at 80
#: rounds in the same runs (2026-12-05); the README gives the wall time it costs.
DEFAULT_EXPERIMENT_BATCH_SIZE = 16
DEFAULT_EXPERIMENT_LOCAL_STEPS = 120
DEFAULT_EXPERIMENT_ROUNDS = 100
#: Overrides that give the default experiment's clients their work before 2026-12-04 (30
#: local steps of 64), the workload earlier benchmark rows measured; add
#: ``federation.rounds=60`` for its whole run.
PREVIOUS_DEFAULT_EXPERIMENT = [
    "task.params.batch_size=64",
    "federation.local_steps=30",
]


def fill_default_experiment(raw: dict[str, Any]) -> None:
    """Add the default experiment's batch size, rounds and local steps where ``raw`` has none.

    Only while the task is still its cGAN: ``task.name=cvae`` starts from the fields'
    defaults, as it did. A local budget in epochs counts as given local steps.
    """
    task = raw.setdefault("task", {})
    if not isinstance(task, dict) or task.get("name", "cgan") != "cgan":
        return
    params = task.setdefault("params", {})
    if isinstance(params, dict):
        params.setdefault("batch_size", DEFAULT_EXPERIMENT_BATCH_SIZE)
    federation = raw.setdefault("federation", {})
    if isinstance(federation, dict):
        federation.setdefault("rounds", DEFAULT_EXPERIMENT_ROUNDS)
        if not {"local_steps", "local_epochs"} & federation.keys():
            federation["local_steps"] = DEFAULT_EXPERIMENT_LOCAL_STEPS


def parse_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a raw mapping; turn pydantic's errors into one readable ``ConfigError``."""
    _check_plain(raw)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(explain(exc, ExperimentConfig)) from None


def _check_plain(raw: object) -> None:
    """Reject what no recipe holds and later steps would trip over, naming the key.

    Keys are text; values are text, numbers, booleans, null, lists and mappings (or
    already-built config models); numbers are finite and within 64 bits; nesting and
    size are bounded. Iterative, so no input can exhaust the stack.
    """
    stack: list[tuple[object, str, int]] = [(raw, "", 0)]
    seen = 0
    while stack:
        value, key, depth = stack.pop()
        seen += 1
        where = key or "config"
        if depth > MAX_DEPTH or seen > MAX_VALUES:
            raise ParamsError(
                [
                    f"{where}: the config nests deeper than {MAX_DEPTH} levels or holds more "
                    f"than {MAX_VALUES} values; does a YAML anchor (&a) refer to itself?"
                ]
            )
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ParamsError([f"{where}: key {_short(k)} is not text; keys are names"])
                stack.append((v, f"{key}.{k}" if key else k, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend(
                (v, f"{key}.{i}" if key else str(i), depth + 1) for i, v in enumerate(value)
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise ParamsError([f"{where}: {value} is not a usable setting; give a finite number"])
        elif isinstance(value, int) and not -MAX_INT < value < MAX_INT:
            raise ParamsError([f"{where}: {_short(value)} is out of range; keep |n| < 2^64"])
        elif not (value is None or isinstance(value, str | int | float | BaseModel)):
            raise ParamsError(
                [
                    f"{where}: a {type(value).__name__} ({_short(value)}) is not a config "
                    "value; give text, a number, true/false, null, a list or a mapping"
                ]
            )


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (inputs can be huge)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_components_of(cfg: ExperimentConfig) -> None:
    """Check every named component and its parameters before anything runs.

    All problems are gathered and raised together, as Opacus's validators do.
    """
    from fedgen.registry import (
        BACKENDS,
        PARTITIONERS,
        SOURCES,
        STRATEGIES,
        TASKS,
        TEXT_SOURCES,
        TRANSFORMS,
    )

    problems: list[str] = []

    def check_params(
        kind: str, key: str, factory: Any, params: dict[str, Any], reserved: tuple[str, ...] = ()
    ) -> None:
        sig = inspect.signature(factory)
        names = [n for n in sig.parameters if n not in ("self", *reserved)]
        for p in params:
            if p not in names:
                problems.append(
                    f"unknown key '{key}.{p}' for {kind}; allowed: {', '.join(names) or '(none)'}"
                )

    known = sorted({*SOURCES.names(), *TEXT_SOURCES.names()})
    for src in cfg.data.sources:
        if src not in SOURCES and src not in TEXT_SOURCES:
            problems.append(f"data.sources: unknown source {src!r}; choose from {', '.join(known)}")
    if any(s in TEXT_SOURCES for s in cfg.data.sources) and len(cfg.data.sources) != 1:
        problems.append(
            f"data.sources: a text source federates alone, got {cfg.data.sources}; name one"
        )
    if cfg.data.partition.kind not in PARTITIONERS:
        problems.append(
            f"data.partition.kind: unknown {cfg.data.partition.kind!r}; choose from "
            f"{', '.join(PARTITIONERS.names())}"
        )
    else:
        check_params(
            f"partitioner {cfg.data.partition.kind!r}",
            "data.partition.params",
            PARTITIONERS.get(cfg.data.partition.kind),
            cfg.data.partition.params,
        )
    if cfg.task.name not in TASKS:
        problems.append(
            f"task.name: unknown {cfg.task.name!r}; choose from {', '.join(TASKS.names())}"
        )
    else:
        params_model = TASKS.get(cfg.task.name).Params  # type: ignore[attr-defined]
        try:
            params_model.model_validate(cfg.task.params)
        except ValidationError as exc:
            problems.extend(explain(exc, params_model, prefix="task.params."))
    for key, registry, comp, reserved in (
        ("strategy", STRATEGIES, cfg.strategy, ("root_seed",)),
        ("backend", BACKENDS, cfg.backend, ()),
    ):
        if comp.name not in registry:
            problems.append(
                f"{key}.name: unknown {comp.name!r}; choose from {', '.join(registry.names())}"
            )
        else:
            check_params(
                f"{key} {comp.name!r}",
                f"{key}.params",
                registry.get(comp.name),
                comp.params,
                reserved,
            )
    for i, t in enumerate(cfg.transforms):
        if t.name not in TRANSFORMS:
            problems.append(
                f"transforms[{i}].name: unknown {t.name!r}; choose from "
                f"{', '.join(TRANSFORMS.names())}"
            )
        else:
            check_params(
                f"transform {t.name!r}", f"transforms[{i}].params", TRANSFORMS.get(t.name), t.params
            )
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
