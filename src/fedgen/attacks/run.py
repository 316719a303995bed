"""Run a leakage attack against a finished run folder and write its figures and pictures.

``run_attack(run_dir, "membership")`` loads the newest checkpoint, attacks the
released model (the weights the run samples with) with members drawn from the
clients' training images and non-members from the test split, and writes
``attack_membership.json`` and ``attack_membership_roc.svg``.

``run_attack(run_dir, "inversion")`` takes the global weights a client would
receive next round, computes one client's update on a small real batch, and
inverts it as the server would see it with no defence, under DP, and under
secure aggregation; it writes ``attack_inversion.json`` and
``attack_inversion.png`` (originals in the first row, then one row of
best-matched reconstructions per setting).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedgen.attacks.image_similarity import reconstruction_figures
from fedgen.attacks.inversion import InversionConfig, invert_gradients
from fedgen.attacks.membership import NONMEMBERS_DESCRIPTION, draw_candidates, membership_attack
from fedgen.attacks.observed_update import (
    dp_update,
    gradient_target,
    secure_sum,
    share_of_sum,
)
from fedgen.attacks.white_box import white_box_access
from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.engine.checkpoint import list_checkpoints
from fedgen.errors import CheckpointError, ConfigError
from fedgen.eval.classifier import FeatureClassifier
from fedgen.images.grid import save_grid
from fedgen.modality import Modality
from fedgen.report.svg import line_chart
from fedgen.seeding import derive_seed, torch_generator

log = logging.getLogger(__name__)

AttackKind = Literal["membership", "inversion"]
KINDS: tuple[str, ...] = ("membership", "inversion")


class MembershipOptions(BaseModel):
    """Options of ``run_attack(..., "membership")``."""

    model_config = ConfigDict(extra="forbid")

    n: int | None = Field(None, ge=1, description="members and non-members each (<= 1000 if None)")
    samples_per_class: int = Field(1000, ge=1, description="synthetic draws per class (GAN-Leaks)")
    space: Literal["pixel", "features"] = "pixel"
    client: int | None = Field(None, ge=0, description="members from this client only")
    untrained: bool = Field(
        False,
        description="attack the run's initial weights instead of its released ones: the "
        "reference row, what the attack reads from members and non-members alone (the "
        "root seed's weights, also for a run started from another's)",
    )
    seed: int = 0


class InversionOptions(BaseModel):
    """Options of ``run_attack(..., "inversion")``."""

    model_config = ConfigDict(extra="forbid")

    client: int = Field(0, ge=0)
    batch_size: int = Field(2, ge=1)
    iterations: int = Field(300, ge=1)
    restarts: int = Field(1, ge=1)
    lr: float = Field(0.1, gt=0)
    tv_weight: float = Field(1e-2, ge=0)
    distance: Literal["cosine", "l2"] = "cosine"
    clip_norm: float = Field(1.0, gt=0)
    noise_multiplier: float = Field(1.0, ge=0)
    secure_sum_clients: int = Field(4, ge=2)
    seed: int = 0


def _options(model: type[BaseModel], options: dict[str, Any], kind: str) -> Any:
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"bad options for the {kind} attack: {problems}; allowed options are "
            f"{sorted(model.model_fields)}"
        ) from exc


def run_attack(
    run_dir: Path, kind: AttackKind, out: Path | None = None, **options: Any
) -> dict[str, float]:
    """Attack the newest checkpoint of ``run_dir``; write ``attack_<kind>.json`` and a picture.

    Args:
        run_dir: a run folder written by ``fedgen run`` / ``run_experiment``.
        kind: ``"membership"`` (options: ``MembershipOptions``) or ``"inversion"``
            (options: ``InversionOptions``).
        out: folder for the JSON and the picture (default: ``run_dir``).

    Returns the figures (also under ``"figures"`` in the JSON).

    Raises:
        ConfigError: unknown kind or option, a batch larger than the client's
            data, too few clients for the secure sum, a task with no target.
        CheckpointError: the run folder holds no checkpoint yet.
    """
    from fedgen.experiment import load_run

    if kind not in KINDS:
        raise ConfigError(f"unknown attack kind {kind!r}; choose one of {', '.join(KINDS)}")
    opts = _options(MembershipOptions if kind == "membership" else InversionOptions, options, kind)
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); train one first")
    untrained = kind == "membership" and opts.untrained
    if not untrained and not list_checkpoints(run_dir / "checkpoints"):
        raise CheckpointError(
            f"{run_dir} holds no checkpoint, so there is no trained model to attack; "
            "let the run finish at least one round (checkpoint.every: 1) and try again"
        )
    exp = _untrained(run_dir) if untrained else load_run(run_dir)
    if kind == "membership" and exp.task.modality != Modality.IMAGES:
        raise ConfigError(
            f"the membership attack reads images (members: the clients' training images; "
            f"non-members: the test split); task {exp.config.task.name} makes "
            f"{exp.task.modality}. For tables, the run's dcr_* figures measure how close "
            "synthetic rows come to training rows"
        )
    out_dir = Path(out) if out is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "membership":
        figures, record = _membership(exp, opts, out_dir)
    else:
        figures, record = _inversion(exp, opts, out_dir)
    record.update(
        kind=kind,
        run_dir=str(run_dir),
        # -1: the initial weights, before any round.
        round=-1 if untrained else exp.federation.next_round - 1,
        task=exp.config.task.name,
        options=opts.model_dump(),
        figures=figures,
    )
    (out_dir / f"attack_{kind}.json").write_text(json.dumps(record, indent=1))
    return figures


def _untrained(run_dir: Path) -> Any:
    """The run's experiment at the root seed's initial weights (never ``init_from``'s: the
    run it names may have trained on since, and the reference wants no training at all).

    Why: the non-members are the test split, which other people wrote than the training
    digits, so an attack can tell the two sets apart a little without any training; its
    figures on the untrained model measure that offset, which a trained row's distance
    from 0.5 includes.
    """
    from fedgen.experiment import build_experiment, load_config

    cfg = load_config(run_dir / "config.yaml", validate_components=False)
    return build_experiment(cfg, start_weights=False)


def _clients(exp: Any) -> list[ClientData]:
    """The clients that trained, ordered by id (``Federation.clients`` is a dict or a list)."""
    held = exp.federation.clients
    found = list(held.values()) if isinstance(held, Mapping) else list(held)
    return sorted(found, key=lambda c: c.client_id)


def _client(clients: list[ClientData], client: int) -> ClientData:
    by_id = {c.client_id: c for c in clients}
    if client not in by_id:
        raise ConfigError(
            f"client {client} does not exist; the run has clients {min(by_id)}..{max(by_id)}"
        )
    return by_id[client]


def _members(exp: Any, client: int | None) -> ImageDataset:
    clients = _clients(exp)
    if client is not None:
        return _client(clients, client).data
    datasets = [c.data for c in clients]
    first = datasets[0]
    return ImageDataset(
        name=f"{first.name} (clients' training images)",
        images=torch.cat([d.images for d in datasets]),
        labels=torch.cat([d.labels for d in datasets]),
        class_names=first.class_names,
    )


def _split_for_embedder(test: ImageDataset, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """A seeded half of ``test`` to train the feature space on, and the other half.

    The halves get their own name, so the embedder's cache file is told apart from the
    evaluator's by name as well as by the data's fingerprint.
    """
    rows = torch.randperm(len(test), generator=torch_generator(seed, "attack", "embedder-split"))
    half = len(test) // 2
    trained_on = test.subset(rows[:half].sort().values)
    rest = test.subset(rows[half:].sort().values)
    return replace(trained_on, name=f"{test.name} attack-embedder half"), rest


def _membership(
    exp: Any, opts: MembershipOptions, out_dir: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    fed = exp.federation
    # The released weights: the global model the server holds (a client's own private
    # tensors are never released), whichever model `fedgen sample` draws by default.
    task = fed.load_global_into_task()
    access = white_box_access(fed, task)
    notes = list(access.notes)
    members_pool = _members(exp, opts.client)
    nonmember_pool: ImageDataset = exp.data.test
    embed = None
    if opts.space == "features":
        # An embedding trained on the members would set them apart whatever the
        # generator did (the evaluator's classifier trains on the pooled training
        # split): train one on half the test split, draw non-members from the other.
        embedder_data, nonmember_pool = _split_for_embedder(exp.data.test, opts.seed)
        classifier = FeatureClassifier.load_or_train(
            embedder_data,
            nonmember_pool,
            seed=derive_seed(opts.seed, "attack", "membership", "embedder") % (2**31),
            epochs=exp.config.eval.classifier_epochs,
        )
        embed = classifier.features
        notes.append(
            f"GAN-Leaks distances in the feature space of a SmallCNN trained "
            f"{classifier.epochs} epoch(s) on {len(embedder_data)} test-split images that are "
            f"neither members nor non-members (accuracy {classifier.test_accuracy:.3f} on "
            f"the other {len(nonmember_pool)}, the non-members' pool)"
        )
    else:
        notes.append("GAN-Leaks distances are L2 in pixel space ([0, 1] intensities)")
    draw = draw_candidates(
        members_pool,
        nonmember_pool,
        opts.n,
        torch_generator(opts.seed, "attack", "membership", "candidates"),
    )
    notes.extend(draw.notes)
    result = membership_attack(
        task,
        draw.members,
        draw.nonmembers,
        torch_generator(opts.seed, "attack", "membership", "scores"),
        samples_per_class=opts.samples_per_class,
        embed=embed,
        white_box=access.white_box,
    )
    series = {name: curve.points() for name, curve in result.curves.items()}
    series["chance"] = [(0.0, 0.0), (1.0, 1.0)]
    svg = line_chart(series, "membership inference ROC", x_label="false positive rate")
    (out_dir / "attack_membership_roc.svg").write_text(svg)
    record: dict[str, Any] = {
        "notes": notes + result.notes,
        "nonmembers_class_matched": True,
        "descriptions": {
            "weights": "initial (untrained): the offset members and non-members show alone"
            if opts.untrained
            else "released (the newest checkpoint)",
            "members": "clients' training images" if opts.client is None else "one client's",
            "nonmembers": NONMEMBERS_DESCRIPTION
            + (
                "; half the test split (the other half trained the feature space)"
                if opts.space == "features"
                else ""
            ),
            "logan": "discriminator logit D(x, y) (white-box, Hayes et al. 2019)",
            "elbo": "Monte Carlo ELBO of the cVAE (white-box, Hilprecht et al. 2019)",
            "ganleaks": "-min L2 distance to synthetic samples of the same class "
            "(full black-box, Chen et al. 2020)",
            "auc": "ROC AUC; 0.5 is chance",
            "tpr_at_1pct_fpr": "fraction of members caught when 1% of non-members are accused",
        },
    }
    return result.figures, record


def _inversion(
    exp: Any, opts: InversionOptions, out_dir: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    fed = exp.federation
    task = fed.task
    task.load_state(fed.global_state)  # what every client trains from next round
    target = gradient_target(task, noise_seed=derive_seed(opts.seed, "attack", "vae-noise"))
    owners = {"discriminator"} if target.name == "discriminator" else {"encoder", "decoder"}
    if not owners <= set(task.federated_modules()):
        raise ConfigError(
            f"the {target.name} is not federated in this run, so the server never sees its "
            "update and there is nothing to invert"
        )
    clients = _clients(exp)
    held = _client(clients, opts.client).num_examples
    if opts.batch_size > held:
        raise ConfigError(
            f"batch_size {opts.batch_size} is larger than client {opts.client}'s "
            f"{held} examples; pass batch_size <= {held} or another client"
        )
    # The target client first, then the next clients (by id) holding a full batch.
    start = [c.client_id for c in clients].index(opts.client)
    ring = clients[start:] + clients[:start]
    order = [ring[0]] + [c for c in ring[1:] if c.num_examples >= opts.batch_size]
    # A run of one client (federation.centralized) has no sum for its update to hide in:
    # only the update as sent and its DP view are attacked.
    summing = len(clients) > 1
    if summing and len(order) < opts.secure_sum_clients:
        raise ConfigError(
            f"secure_sum_clients={opts.secure_sum_clients} but only {len(order)} clients hold "
            f"{opts.batch_size} examples; pass a smaller secure_sum_clients or batch_size"
        )
    gen = torch_generator(opts.seed, "attack", "inversion", "batches")
    batches = []
    for chosen in order[: opts.secure_sum_clients if summing else 1]:
        data = chosen.data
        rows = torch.randperm(len(data), generator=gen)[: opts.batch_size]
        batches.append((data.images[rows].float().div(255.0), data.labels[rows]))
    images, labels = batches[0]
    update = target.gradient(images, labels)
    views = {
        "none": (update, labels, 1),
        "dp": (
            dp_update(
                update,
                opts.clip_norm,
                opts.noise_multiplier,
                torch_generator(opts.seed, "attack", "inversion", "dp-noise"),
            ),
            labels,
            1,
        ),
    }
    figures: dict[str, float] = {}
    if summing:
        summed = secure_sum([target.gradient(x, y) for x, y in batches])
        views["secure_sum"] = (summed, labels, 1)
        views["secure_sum_all"] = (summed, torch.cat([y for _, y in batches]), len(batches))
        # How much the secure sum points the target's way: near 1 when the target's
        # gradient dominates the others' (e.g. on a model DP noise blew up), and secure
        # aggregation then hides little of it.
        figures["secure_sum_target_cosine"] = share_of_sum(update, summed)
    config = InversionConfig(
        iterations=opts.iterations,
        lr=opts.lr,
        tv_weight=opts.tv_weight,
        distance=opts.distance,
        restarts=opts.restarts,
    )
    rows_out = [images]
    for name, (observed, dummy_labels, groups) in views.items():
        log.info("inverting the %s view of client %d's update", name, opts.client)
        rec = invert_gradients(
            target,
            observed,
            dummy_labels,
            tuple(task.image_shape),
            torch_generator(opts.seed, "attack", "inversion", name),
            config,
            groups=groups,
        )
        found, matched = reconstruction_figures(images, rec.images, name)
        figures.update(found)
        figures[f"gradient_distance_{name}"] = rec.gradient_distance
        rows_out.append(matched)
    save_grid(torch.cat(rows_out), out_dir / "attack_inversion.png", nrow=opts.batch_size, scale=3)
    record: dict[str, Any] = {
        "rows": ["originals", *views],
        "target": target.name,
        "labels": labels.tolist(),
        "descriptions": {
            "none": "the client's gradient on its batch, as sent",
            "dp": f"clipped to L2 norm {opts.clip_norm}, Gaussian noise of std "
            f"{opts.noise_multiplier * opts.clip_norm:g} per coordinate added",
            "secure_sum": f"sum of {len(batches)} clients' gradients; the attacker "
            "reconstructs only the target's batch (its labels known)",
            "secure_sum_all": f"the same sum; the attacker reconstructs all "
            f"{len(batches) * opts.batch_size} images (all labels known) and the target's "
            "originals are matched among them",
            "secure_sum_target_cosine": "cosine between the target's gradient and the sum",
            "psnr": "dB on [0, 1] images after the best one-to-one match, batch mean",
            "psnr_best": "the best single image",
            "ssim": "Gaussian-window SSIM (Wang et al. 2004), batch mean",
        },
    }
    return figures, record
