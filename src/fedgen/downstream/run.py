"""Drive a recipe's ``downstream:`` section: generator first, then every classifier arm.

``fedgen run`` calls ``run_downstream`` when a recipe has the section. Without
``generator_run`` the experiment's generator is trained into the run folder first (the
usual ``run_experiment``); with it, that finished run's newest checkpoint is used. Then
each arm of ``downstream.modes`` trains the classifier and is written to
``downstream.json`` as soon as it finishes (a cut-off run keeps the arms it finished),
its figures also going into ``summary.json`` under ``downstream_<arm>_*`` keys. A
resumed run (``fedgen run --resume``) finishes the generator, keeps the arms
``downstream.json`` holds for the same settings and generator, and trains the rest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from fedgen.config import DownstreamConfig, ExperimentConfig
from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.data.federated import FederatedData, make_federated_data
from fedgen.data.sources import get_source
from fedgen.downstream.accuracy import class_accuracy
from fedgen.downstream.classifier_federation import ArmResult, federate_classifier
from fedgen.downstream.errors import DownstreamError
from fedgen.downstream.generator_run import GeneratorRun, check_classes, open_generator_run
from fedgen.downstream.membership import (
    MEMBERSHIP_NOTE,
    classifier_attack,
    generator_membership,
    pooled,  # noqa: F401  (re-exported: benchmarks import it from here)
)
from fedgen.downstream.one_shot import EnsembleSet, ensemble_set, one_shot_federation
from fedgen.downstream.pipeline import Pipeline, classifier_pipeline
from fedgen.downstream.privacy_note import privacy_note, synthetic_only_note
from fedgen.downstream.server_finetune import ServerFineTune
from fedgen.downstream.stratified import stratified_subset
from fedgen.downstream.synthetic import balanced_counts, synthesize
from fedgen.downstream.topup import topped_up
from fedgen.engine.run_lock import folder_hold
from fedgen.errors import FedgenError
from fedgen.eval.classifier import train_classifier
from fedgen.experiment import run_experiment
from fedgen.files import write_text_atomic
from fedgen.params import validate_params
from fedgen.registry import PARTITIONERS
from fedgen.report.html import write_report
from fedgen.seeding import derive_seed, torch_generator
from fedgen.tasks.base import Task

log = logging.getLogger(__name__)

ArmCallback = Callable[[ArmResult, dict[str, Any]], None]
"""Called with each finished arm and its JSON record (a benchmark writes its row there)."""

#: Members and non-members each membership attack scores by default.
ATTACK_CANDIDATES = 1000


def run_downstream(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    progress: bool = True,
    on_arm: ArmCallback | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the generator (or open ``downstream.generator_run``), then the classifier
    arms; return ``summary.json``'s content, with the ``downstream_*`` figures. With
    ``resume`` the generator's run is continued and finished arms are kept.

    Raises ``DownstreamError`` for a recipe without a ``downstream:`` section, a
    generator run that is unfinished, of another data set or of other classes.
    """
    dcfg = cfg.downstream
    if dcfg is None:
        raise DownstreamError(
            "the recipe has no downstream: section; add one to train a classifier"
        )
    out = Path(out)
    # The folder is held (engine/run_lock.py) for the whole run, arms included: from the
    # start when it exists, else from when the generator's run has made it.
    with ExitStack() as held:
        if out.is_dir():
            held.enter_context(folder_hold(out))
        return _run_held(cfg, dcfg, out, held, progress=progress, on_arm=on_arm, resume=resume)


def _run_held(
    cfg: ExperimentConfig,
    dcfg: DownstreamConfig,
    out: Path,
    held: ExitStack,
    *,
    progress: bool,
    on_arm: ArmCallback | None,
    resume: bool,
) -> dict[str, Any]:
    """``run_downstream``'s body; ``held`` holds the folder, from when it exists to the end."""

    def keep_held(exp: Any) -> None:
        held.enter_context(folder_hold(out))

    _check_test_examples(cfg, dcfg)  # before the generator trains, not after
    if dcfg.generator_run is None:
        summary = run_experiment(cfg, out, progress=progress, resume=resume, on_ready=keep_held)
        if summary["status"] in ("interrupted", "failed"):
            return summary  # no usable generator: nothing downstream to do (yet)
        generator = open_generator_run(out, cfg)
    else:
        if out.resolve() == Path(dcfg.generator_run).resolve():
            raise DownstreamError(
                f"--out {out} is the generator run itself; write the downstream run to "
                "another folder so the generator's config and summary stay as they are"
            )
        generator = open_generator_run(dcfg.generator_run, cfg)
        if not resume:
            # A fresh downstream run writes these over what is there: another run's
            # results (a generator trained in this folder, an earlier downstream run).
            found = [n for n in _RUN_FILES if (out / n).exists()]
            if found:
                raise DownstreamError(
                    f"--out {out} holds {', '.join(found)}, which this run would "
                    "overwrite; choose another --out, or, if this downstream run stopped "
                    f"there, continue it with fedgen run --resume {out}"
                )
        out.mkdir(parents=True, exist_ok=True)
        keep_held(None)
        write_text_atomic(out / "config.yaml", cfg.to_yaml())
        summary = {"status": "completed", "generator_run": str(dcfg.generator_run)}
    data = downstream_data(cfg, generator)
    test = scored_test_split(data.test, dcfg.test_examples, cfg.seed)
    data = FederatedData(clients=data.clients, train=data.train, test=test)
    kept = _finished_arms(out) if resume else {}
    record = run_arms(cfg, dcfg, generator, data, out, progress=progress, on_arm=on_arm, kept=kept)
    summary.update(flat_figures(record))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    write_report(out)  # now with the downstream section
    return summary


#: What a run writes into its folder: a fresh downstream run refuses a folder holding them.
_RUN_FILES = ("config.yaml", "summary.json", "downstream.json", "metrics.jsonl", "checkpoints")


def scored_test_split(test: ImageDataset, test_examples: int | None, seed: int) -> ImageDataset:
    """The test images every arm is scored on: all of ``test``, or ``test_examples`` of them.

    The subset is seeded (the same for every arm) and drawn per class, as evenly as the
    split allows: a plain random draw of a few images misses classes, and a missing
    class reports a worst-class accuracy of 0 for every arm. Raises ``DownstreamError``
    if ``test_examples`` is below the number of classes.
    """
    if test_examples is None or test_examples >= len(test):
        return test
    return stratified_subset(test, test_examples, torch_generator(seed, "ds-test"))


def _check_test_examples(cfg: ExperimentConfig, dcfg: DownstreamConfig) -> None:
    """Refuse ``test_examples`` below the class count before anything trains (the data's
    classes are known from its first source; ``stratified_subset`` checks again)."""
    if dcfg.test_examples is None:
        return
    try:
        classes = len(dcfg.classes or get_source(cfg.data.sources[0]).class_names)
    except FedgenError:
        return  # not an image source: the recipe fails elsewhere, with its own message
    if dcfg.test_examples < classes:
        raise DownstreamError(
            f"downstream.test_examples is {dcfg.test_examples} but the data has {classes} "
            f"classes, so a class would have no test image; set test_examples >= {classes} "
            "(or null for the whole test split)"
        )


def _finished_arms(out: Path) -> dict[str, Any]:
    """What ``out/downstream.json`` holds of an earlier part of this run (empty if none)."""
    path = out / "downstream.json"
    if not path.is_file():
        return {}
    try:
        held = json.loads(path.read_text())
        return held if isinstance(held, dict) else {}
    except ValueError:
        return {}  # a file cut off mid-write: its arms are trained again


def downstream_data(cfg: ExperimentConfig, generator: GeneratorRun) -> FederatedData:
    """The classifier's clients: the recipe's data and partition (the generator's own
    when the generator was trained from this recipe)."""
    gen_cfg = generator.experiment.config
    if gen_cfg.data == cfg.data and gen_cfg.seed == cfg.seed:
        data: FederatedData = generator.experiment.data
        return data
    kind = cfg.data.partition.kind
    params = dict(
        validate_params(PARTITIONERS.get(kind), cfg.data.partition.params, "data.partition")
    )
    return make_federated_data(
        cfg.data.sources,
        cfg.data.num_clients,
        PARTITIONERS.get(kind)(**params),
        seed=cfg.seed,
        data_dir=cfg.data.data_dir,
    )


def run_arms(
    cfg: ExperimentConfig,
    dcfg: DownstreamConfig,
    generator: GeneratorRun,
    data: FederatedData,
    out: Path,
    *,
    progress: bool = False,
    on_arm: ArmCallback | None = None,
    kept: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every arm of ``dcfg.modes`` in turn; ``downstream.json`` rewritten after each.
    ``kept`` is an earlier part's record: its arms are kept when its settings and
    generator are this run's."""
    check_classes(data.train.class_names, cfg)
    if data.train.class_names != generator.class_names:
        raise DownstreamError(
            f"the classifier's data has classes {list(data.train.class_names)} but the "
            f"generator's has {list(generator.class_names)}; use the same data set"
        )
    epsilon = generator.epsilon
    delta = generator.summary.get("delta")
    gen_attack = generator_membership(generator, dcfg.attack_candidates)
    # The same candidates for every arm, and the untrained reference beside each.
    attack = classifier_attack(data, dcfg.attack_candidates, cfg.seed)
    record: dict[str, Any] = {
        "generator_run": str(generator.folder),
        "generator_task": generator.experiment.config.task.name,
        # The generator's model every arm draws from (and the membership attack scores).
        "generator_model": generator.model,
        "settings": dcfg.model_dump(mode="json"),
        "generator_epsilon": epsilon,
        "generator_delta": delta,
        "synthetic_only_privacy": synthetic_only_note(epsilon, delta),
        "generator_membership": gen_attack.figures,
        "generator_membership_notes": gen_attack.notes,
        **attack.record(),
        "arms": {},
    }
    gen_task = generator.task
    common = dict(
        rounds=dcfg.rounds,
        local_steps=dcfg.local_steps,
        fraction=dcfg.fraction,
        batch_size=dcfg.batch_size,
        lr=dcfg.lr,
        seed=cfg.seed,
        eval_every=dcfg.eval_every,
        progress=progress,
    )

    def pipeline_for(clients: list[ClientData]) -> Callable[[Task], Pipeline]:
        return lambda task: classifier_pipeline(dcfg, cfg.seed, task, clients)

    classes = data.train.class_names
    server_set: ImageDataset | None = None

    def server_synthetic() -> ImageDataset:
        nonlocal server_set
        if server_set is None:
            counts = balanced_counts(len(classes), dcfg.server_samples_per_class)
            gen = torch_generator(cfg.seed, "downstream", "server-synthetic")
            server_set = synthesize(gen_task, counts, classes, gen)
        return server_set

    ensemble: EnsembleSet | None = None

    def one_shot_ensemble() -> EnsembleSet:
        # One set for both arms that use it: the clients send their generators once.
        nonlocal ensemble
        if ensemble is None:
            ensemble = ensemble_set(
                list(data.clients),
                data.test,
                task_name=dcfg.one_shot_task,
                steps=dcfg.one_shot_steps,
                samples=dcfg.one_shot_samples,
                seed=cfg.seed,
                batch_size=dcfg.batch_size,
            )
        return ensemble

    kept = kept or {}
    same = (
        kept.get("settings") == record["settings"]
        and kept.get("generator_model") == record["generator_model"]
        # The run's own generator is the same wherever its folder was moved to.
        and (dcfg.generator_run is None or kept.get("generator_run") == record["generator_run"])
    )
    for mode in dcfg.modes:
        if same and mode in kept.get("arms", {}):
            log.info("downstream arm %s: kept from the earlier part of the run", mode)
            record["arms"][mode] = kept["arms"][mode]
            continue
        log.info("downstream arm %s", mode)
        if mode == "real":
            arm = federate_classifier(
                "real",
                data.clients,
                data.test,
                pipeline=pipeline_for(data.clients),
                **common,  # type: ignore[arg-type]
            )
        elif mode == "topup":
            t0 = time.perf_counter()
            clients: list[ClientData] = []
            added = 0
            for client in data.clients:
                gen = torch_generator(cfg.seed, "downstream", "topup", client.client_id)
                shard, n = topped_up(
                    client, gen_task, dcfg.topup_ratio, dcfg.topup_max_per_class, gen
                )
                clients.append(shard)
                added += n
            sampling = time.perf_counter() - t0
            arm = federate_classifier(
                "topup",
                clients,
                data.test,
                pipeline=pipeline_for(clients),
                **common,  # type: ignore[arg-type]
            )
            if arm.seconds is not None:  # withheld under client-level DP
                arm.seconds += sampling
            arm.synthetic_examples = added
            arm.notes.append(
                f"clients drew {added} synthetic examples before round 1 "
                f"(ratio {dcfg.topup_ratio:g}, at most {dcfg.topup_max_per_class} a class), "
                f"{sampling:.1f} s included"
            )
        elif mode == "server_finetune":
            synth = server_synthetic()
            finetune = ServerFineTune(synth, dcfg.server_steps, derive_seed(cfg.seed, "ft"))
            arm = federate_classifier(
                "server_finetune",
                data.clients,
                data.test,
                extra_callbacks=[finetune],
                pipeline=pipeline_for(data.clients),
                **common,  # type: ignore[arg-type]
            )
            arm.synthetic_examples = len(synth)
            arm.notes.append(
                f"{dcfg.server_steps} server steps on {len(synth)} balanced synthetic "
                "examples after every round"
            )
        elif mode == "synthetic":
            t0 = time.perf_counter()
            synth = server_synthetic()
            model = train_classifier(
                synth.float_images(),
                synth.labels,
                len(classes),
                epochs=dcfg.server_epochs,
                seed=derive_seed(cfg.seed, "synthetic-only"),
            )
            arm = ArmResult(
                "synthetic",
                class_accuracy(model, data.test),
                rounds=0,
                bytes_up=0,
                bytes_down=0,
                seconds=time.perf_counter() - t0,
                model=model,
                synthetic_examples=len(synth),
                notes=["the server trains on the generator's samples alone (TSTR)"],
            )
        elif mode == "one_shot_finetune":
            ens = one_shot_ensemble()
            finetune = ServerFineTune(
                ens.data, dcfg.server_steps, derive_seed(cfg.seed, "ft-one-shot")
            )
            arm = federate_classifier(
                "one_shot_finetune",
                data.clients,
                data.test,
                extra_callbacks=[finetune],
                pipeline=pipeline_for(data.clients),
                **common,  # type: ignore[arg-type]
            )
            # The clients' generators crossed the wire once, before round 1.
            if arm.bytes_up is not None:
                arm.bytes_up += ens.bytes_up
            if arm.seconds is not None:
                arm.seconds += ens.seconds
            arm.synthetic_examples = len(ens.data)
            arm.notes.append(
                f"{dcfg.server_steps} server steps after every round on {len(ens.data)} "
                f"samples of the clients' one-shot {ens.task_name} generators ({ens.steps} "
                f"local steps each, sent once: {ens.bytes_up} bytes, "
                + ("included)" if arm.bytes_up is not None else "the rounds' bytes withheld)")
            )
        else:
            arm = one_shot_federation(
                one_shot_ensemble(), data.test, epochs=dcfg.server_epochs, seed=cfg.seed
            )
        arm_record = arm.figures()
        arm_record["privacy"] = privacy_note(mode, epsilon, delta, arm.own_privacy)
        arm_record["membership"] = attack.figures(arm.model)
        record["arms"][mode] = arm_record
        write_text_atomic(out / "downstream.json", json.dumps(record, indent=1))
        if on_arm is not None:
            on_arm(arm, arm_record)
    # Kept arms after the last trained one are in the record, in the recipe's order.
    write_text_atomic(out / "downstream.json", json.dumps(record, indent=1))
    return record


def flat_figures(record: dict[str, Any]) -> dict[str, Any]:
    """``downstream_<arm>_<figure>`` keys for ``summary.json``, and the privacy notes."""
    flat: dict[str, Any] = {}
    for arm, figures in record["arms"].items():
        for key in ("accuracy", "worst_class_accuracy", "rounds", "bytes_total", "seconds"):
            flat[f"downstream_{arm}_{key}"] = figures[key]
        flat[f"downstream_{arm}_membership_auc"] = figures["membership"]["loss_auc"]
        # No exact chance baseline (MEMBERSHIP_NOTE): the untrained reference beside it.
        untrained = figures["membership"].get("untrained_loss_auc")
        if untrained is not None:
            flat[f"downstream_{arm}_membership_auc_untrained"] = untrained
        flat[f"downstream_{arm}_privacy"] = figures["privacy"]
    if record["arms"]:
        flat["downstream_membership_note"] = record.get("membership_note", MEMBERSHIP_NOTE)
    if record.get("synthetic_only_privacy"):
        flat["downstream_privacy"] = record["synthetic_only_privacy"]
    return flat
