"""The one round loop: sample, send, run, collect, transform, aggregate, record.

Only ``Federation`` iterates rounds. Failures are values: a client that
crashes or sends a malformed update is logged and left out, and the round
goes on while the strategy has enough results.

With differential privacy on, a ``PrivacyAccounting`` charges every round and
adds ``epsilon``/``delta`` to its metrics; when one more round would exceed the
budget the loop stops cleanly after the last round that fits, and says why in
``stop_reason``.

With a ``SecureAggregation`` transform in the pipeline the strategy never sees an
individual update: the clients keep their updates after training, and a stage of
the round (``fedgen.engine.secure_stage``: SecAgg, Bonawitz et al. 2017) runs over
the backend's messages and hands the strategy the unmasked sum
(``Strategy.aggregate_sum``); the server halves then run on that mean as usual.

What a round is comes from its ``Schedule`` (``fedgen.engine.schedule``): a
synchronous cohort (the default), a FedBuff server step over the next K arrivals
on a simulated clock (``fedgen.engine.fedbuff``), or a gossip step in which every
client trains and averages with its neighbours (``fedgen.engine.gossip``). The
loop stays one: validation, failures, metrics, ledger and checkpoints are the
same for every schedule.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from fedgen.data.client_data import ClientData
from fedgen.engine.audit import RoundAudit, RunAudit
from fedgen.engine.backends.base import Backend, LocalWork
from fedgen.engine.backends.signing import ClientKeys
from fedgen.engine.client_side import ClientKit, ClientSide, LocalClientSide
from fedgen.engine.downlink import Downlink
from fedgen.engine.faults import FaultPlan
from fedgen.engine.keystore import NEW_RUN_ADVICE
from fedgen.engine.schedule import Job, Schedule, SynchronousSchedule
from fedgen.engine.secure_stage import SecureAggregationStage
from fedgen.engine.validation import check_result
from fedgen.errors import ClientUpdateError, RoundFailedError
from fedgen.ledger import state_digest
from fedgen.privacy.noise_key import key_from_state, key_to_state, keyed_run_id
from fedgen.seeding import derive_seed
from fedgen.strategies.base import Aggregate, Strategy
from fedgen.tasks.base import Task
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.transforms.codec import decode_arrival
from fedgen.transforms.secagg import SecureAggregation
from fedgen.types import ClientResult, RoundPlan, StateDict, state_nbytes

if TYPE_CHECKING:
    from fedgen.privacy.budget import PrivacyAccounting

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    """What one round produced; callbacks add to ``metrics`` (evaluation figures)."""

    round: int
    metrics: dict[str, Any] = field(default_factory=dict)
    #: What the ledger logs for this round (None when the run keeps no ledger).
    audit: RoundAudit | None = None


class Callback:
    """Hooks around rounds: evaluation, checkpoints, logging, progress."""

    def on_run_start(self, fed: Federation) -> None:
        """Called once before the first round to run (also on resume)."""

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        """Called after each round, in callback order."""

    def on_run_end(self, fed: Federation, completed: bool) -> None:
        """Called once when the loop stops; ``completed`` is False on interruption."""


class Federation:
    """Runs ``rounds`` rounds of federated training of ``task`` over ``clients``."""

    def __init__(
        self,
        *,
        task: Task,
        clients: Sequence[ClientData],
        strategy: Strategy,
        backend: Backend,
        rounds: int,
        seed: int,
        local_steps: int | None = None,
        local_epochs: float | None = None,
        transforms: Sequence[UpdateTransform] = (),
        callbacks: Sequence[Callback] = (),
        max_update_norm: float | None = None,
        privacy: PrivacyAccounting | None = None,
        noise_key: bytes | None = None,
        faults: FaultPlan | None = None,
        audit: RunAudit | None = None,
        client_side: ClientSide | None = None,
        schedule: Schedule | None = None,
        downlink: Downlink | None = None,
        max_failed_rounds: int | None = None,
    ) -> None:
        if (local_steps is None) == (local_epochs is None):
            raise ValueError("give exactly one of local_steps and local_epochs")
        self.task = task
        self.clients = {c.client_id: c for c in clients}
        self.strategy = strategy
        self.backend = backend
        self.rounds = rounds
        self.seed = seed
        self.local_steps = local_steps
        self.local_epochs = local_epochs
        self.transforms = list(transforms)
        self.callbacks = list(callbacks)
        self.max_update_norm = max_update_norm
        self.privacy = privacy
        #: Seeds every DP noise draw (``fedgen.privacy.noise_key``); kept in checkpoints
        #: only, never in the config. None seeds the noise from ``seed``.
        self.noise_key = noise_key
        #: Faults injected into the clients (``fedgen.engine.faults``), or None.
        self.faults = faults
        #: Signing keys for the ledger (``fedgen.engine.audit``), or None: no ledger.
        self.audit = audit
        #: What clients running elsewhere build their parts from (``fedgen.engine.client_side``);
        #: None: this federation's own task, transforms, fault plan and shards.
        self.client_side = client_side
        #: Stop after this many rounds in a row without a usable update (None: never):
        #: a model that diverged, or clients that all send NaN, fail every round alike.
        self.max_failed_rounds = max_failed_rounds
        #: Why the run stopped before ``rounds`` (e.g. the privacy budget), or None.
        self.stop_reason: str | None = None
        #: How it stopped: ``budget_exhausted`` or ``failed`` (rounds in a row failed).
        self.stop_status: str | None = None
        #: The first round this process ran: failed rounds count from it, so a resume
        #: after the cause was fixed (nodes back up) gets ``max_failed_rounds`` afresh.
        self._first_round = 0
        self.auxiliary_keys: frozenset[str] = frozenset(
            key for t in self.transforms for key in getattr(t, "auxiliary_keys", ())
        )
        #: The secure-aggregation transform, if any: the round loop then runs the protocol.
        self.secagg: SecureAggregation | None = next(
            (t for t in self.transforms if isinstance(t, SecureAggregation)), None
        )
        #: The stage that turns the clients' held updates into the aggregate, if any.
        self.stage = (
            None if self.secagg is None else SecureAggregationStage(self.secagg, self.transforms)
        )
        self.global_state: StateDict = task.federated_state()
        self.private_states: dict[int, StateDict] = {}
        self.next_round = 0
        self.history: list[dict[str, Any]] = []
        #: The sha256 of the checkpoint file the state was restored from (set by
        #: ``restore_latest``; the ledger checks it is the one it logged), else None.
        self.restored_digest: str | None = None
        #: What one round is: a synchronous cohort (default), a FedBuff step, a gossip step.
        self.schedule: Schedule = schedule or SynchronousSchedule()
        self.schedule.check(self)
        #: Compressed downlink (``fedgen.engine.downlink``): clients start from a public
        #: copy of the global model sent as compressed deltas; None: the global model.
        self.downlink = downlink

    # -- the loop ------------------------------------------------------------

    def run(self) -> bool:
        """Run the remaining rounds; return False if interrupted (Ctrl-C).

        On interruption the partial round is dropped; a resume goes on from the newest
        checkpoint (the last complete round when ``checkpoint.every`` is 1).
        """
        started: list[Callback] = []
        try:
            if self.audit is not None:
                # Before any state that names the run id can be checkpointed.
                self.audit.save_keys()
            for cb in self.callbacks:
                cb.on_run_start(self)
                started.append(cb)
        except BaseException:
            # No round will run: what started (the backend's workers, a callback's open
            # ledger or writer) must not outlive the run.
            self.backend.close()
            for cb in started:
                # Each is ended even if another's ending fails; the first error stands.
                with contextlib.suppress(Exception):
                    cb.on_run_end(self, False)
            raise
        # What exists now (the clients' shards, the task, the backend's workers' handles)
        # lives for the whole run: moved out of the collector's reach, the periodic full
        # collections no longer scan it every few rounds (about 7% of a round of 1,000
        # tiny clients, benchmarks/results/speed.md).
        gc.freeze()
        completed = False
        self._first_round = self.next_round
        try:
            self._check_stop()
            while self.next_round < self.rounds and self.stop_reason is None:
                record = self.run_round(self.next_round)
                self.next_round += 1
                self.history.append(record.metrics)
                # Known before the callbacks run, so they treat this as the final round.
                self._check_stop()
                for cb in self.callbacks:
                    cb.on_round_end(self, record)
            if self.stop_reason is not None:
                log.warning("%s", self.stop_reason)
            completed = True
        except KeyboardInterrupt:
            if self.next_round == 0:
                log.warning("interrupted in round 0, before any round completed")
            else:
                log.warning(
                    "interrupted in round %d; the last complete round is %d",
                    self.next_round,
                    self.next_round - 1,
                )
        finally:
            gc.unfreeze()
            self.backend.close()
            for cb in self.callbacks:
                cb.on_run_end(self, completed)
        return completed

    @property
    def withholds_cohort(self) -> bool:
        """True under client-level DP: per-round metrics must not reveal the cohort."""
        return self.privacy is not None and self.privacy.unit == "client"

    def is_final_round(self, r: int) -> bool:
        """True for the last round the run will hold (planned, or stopped by the budget)."""
        return r == self.rounds - 1 or (self.stop_reason is not None and r == self.next_round - 1)

    def _check_stop(self) -> None:
        """Set ``stop_reason`` and ``stop_status`` if no further round may run."""
        reason = self._budget_stop()
        if reason is not None:
            self.stop_reason, self.stop_status = reason, "budget_exhausted"
            return
        reason = self._failure_stop()
        if reason is not None:
            self.stop_reason, self.stop_status = reason, "failed"

    def _failed_in_a_row(self) -> int:
        """How many of the newest rounds in a row, since this process started the run,
        aggregated no usable update."""
        count = 0
        for r in range(len(self.history) - 1, self._first_round - 1, -1):
            if "round_failed" not in self.history[r]:
                break
            count += 1
        return count

    def _failure_stop(self) -> str | None:
        # Checked after the last planned round too: a run that ends on failed rounds failed.
        limit = self.max_failed_rounds
        count = self._failed_in_a_row()
        if limit is None or count < limit:
            if self.next_round < self.rounds or not self.history:
                return None
            if any("round_failed" not in m for m in self.history):
                return None
            # Every round kept the initial weights: nothing was trained.
            return (
                "no round had a usable update, so the global model is its initial weights; "
                f"the newest: {self.history[-1]['round_failed']}"
            )
        return (
            f"the last {count} rounds had no usable update (federation.max_failed_rounds="
            f"{limit}): the global model is as it was before round {self.next_round - count}; "
            f"the newest: {self.history[-1]['round_failed']}{_failed_client(self.history[-1])}"
            ". Fix the cause and resume the run (failed rounds are counted afresh from "
            "the resume)"
        )

    def _budget_stop(self) -> str | None:
        if self.privacy is None or self.next_round >= self.rounds:
            return None
        reason = self.privacy.stop_reason()
        if reason is None:
            reason = self._too_few_eligible()
        return reason

    def _too_few_eligible(self) -> str | None:
        """Why no cohort can be planned from the clients with DP-SGD rounds left
        (``dpsgd.rounds_per_client``), or None: the sampler's ``min_clients`` and a robust
        rule's required results are checked before the round, so the run stops cleanly."""
        assert self.privacy is not None
        pool = self.privacy.eligible(sorted(self.clients))
        if len(pool) == len(self.clients):
            return None
        sampler = getattr(self.strategy, "sampler", None)
        need = getattr(sampler, "min_clients", 1)
        required = getattr(self.strategy, "required_results", None)
        expected = getattr(self.strategy, "expected_clients", None)
        if len(pool) >= need and (
            required is None or expected is None or expected(len(pool)) >= required()
        ):
            return None
        return (
            f"only {len(pool)} client(s) have dpsgd.rounds_per_client rounds left, too few "
            f"for the strategy's cohort (min_clients={need}); the run stopped at "
            f"sample-level epsilon={self.privacy.figures()['epsilon']:.4g}"
        )

    def run_round(self, r: int) -> RoundRecord:
        """One round; returns its record without advancing ``next_round``."""
        t0 = time.perf_counter()
        step = self.schedule.begin(r, self)
        plan = step.plan
        if self.downlink is not None:
            # Clients start from the public copy of the global model (a synchronous
            # round's one job); their updates are relative to it.
            start = self.downlink.advance(r, self.global_state)
            for job in step.jobs:
                job.start = start
        keys = None if self.audit is None else self.audit.client_keys()
        side = self.client_side or self._local_side()
        audit = (
            None
            if self.audit is None
            else RoundAudit(
                r,
                state_digest(self.global_state),
                plan.client_ids,
                _plan_config(plan, self.local_steps, self.local_epochs),
            )
        )
        failures: dict[int, str] = {}
        client_metrics: list[dict[str, float]] = []
        bytes_up: dict[int, int] = {}
        bytes_down: dict[int, int] = {}

        expected, seen = set(plan.client_ids), set()

        def accepted() -> Iterator[ClientResult]:
            for job in step.jobs:
                yield from checked(job)

        def checked(job: Job) -> Iterator[ClientResult]:
            arrived: Iterable[ClientResult]
            if job.results is not None:
                arrived = job.results
            else:
                work = self.local_work(job.start, job.round, keys, side)
                arrived = self.backend.run(job.plan, work, self.clients, self.private_states)
            for res in arrived:
                cid = res.client_id
                # Before anything reads it, a result must name a client the work went to,
                # once: the id keys the failures, the weights and the ledger.
                if type(cid) is not int or cid not in expected or cid in seen:
                    log.warning("round %d: dropped a result that names client %.40r", r, cid)
                    continue
                seen.add(cid)
                sent = res.update  # what the client signed: a codec's encoding, if any
                if res.failure is None:
                    # Under secagg this stands for the client's own check before masking:
                    # a real server could not inspect the update.
                    try:
                        # Codecs decode each update on arrival, before any check.
                        res.update = decode_arrival(
                            self.transforms,
                            res.update,
                            job.start,
                            job.round,
                            cid,
                            None if self.downlink is None else self.downlink.shared,
                        )
                        check_result(
                            res,
                            job.start,
                            self.max_update_norm,
                            self.auxiliary_keys,
                            max_examples=self.clients[cid].num_examples,
                            client_id=cid,
                            secure=self.stage is not None,
                        )
                    except ClientUpdateError as exc:
                        res.failure, res.update = f"rejected update: {exc}", None
                bytes_up[cid] = _count(res.bytes_up)
                bytes_down[cid] = _count(res.bytes_down)
                signed = None
                if res.ok and self.audit is not None and self.secagg is None:
                    # A valid update its client did not sign is refused all the same.
                    signed = self.audit.check_signature(replace(res, update=sent), job.round)
                    if signed is None:
                        res.failure = (
                            "the update's signature does not verify under the client's enrolled key"
                        )
                if self.downlink is not None:
                    # Who holds this round's model: the next job sends them deltas only.
                    self.downlink.settle(cid, res.ok)
                if not res.ok:
                    reason = str(res.failure or "no update")[:200]
                    log.warning("round %d: client %d failed: %s", r, cid, reason)
                    failures[cid] = reason
                    continue
                client_metrics.append({**res.metrics, "examples": float(res.num_examples)})
                if audit is not None:
                    audit.aggregated.append(cid)
                    if signed is not None:
                        digest, signature = signed
                        audit.updates.append((cid, digest, res.num_examples, signature))
                        if job.round != r:
                            # Sent in an earlier round (wall-clock FedBuff): signed for it.
                            audit.signed_rounds[cid] = job.round
                yield res

        metrics: dict[str, Any] = {"round": r}
        aggregated = False
        link = None
        try:
            if self.stage is None:
                combined = self.schedule.combine(r, self, step, accepted())
            else:
                # A stage of its own after training: the clients hold their updates.
                combined, link = self.stage.aggregate(
                    r,
                    seed=self.seed,
                    strategy=self.strategy,
                    global_state=self.global_state,
                    auxiliary=self.auxiliary_keys,
                    results=accepted(),
                    exchange=lambda requests: self.backend.exchange(r, requests),
                    metrics=metrics,
                    privacy=self.privacy,
                    audit=audit,
                )
            if combined is None:
                # The schedule set the new state itself (gossip: no server aggregation).
                self._server_free_round(client_metrics, metrics)
            else:
                self._server_step(r, combined, metrics)
            aggregated = True
        except RoundFailedError as exc:
            # The global state is left as it was; the run goes on to the next round.
            log.error("%s; keeping the previous global state", exc)
            metrics["round_failed"] = str(exc)
            metrics["examples"] = 0
            if audit is not None:
                audit.round_failure = str(exc)
        finally:
            if self.stage is not None:
                # What the clients held for the stage (keys, updates) ends with the round.
                self.backend.end_stage()
        if audit is not None:
            audit.failures = dict(failures)
            if aggregated:
                audit.aggregate_digest = state_digest(self.global_state)
        metrics["clients"] = len(plan.instructions) - len(failures)
        metrics["failures"] = len(failures)
        if failures:
            metrics["failed_clients"] = {str(k): v for k, v in sorted(failures.items())}
        # What each backend sent a client (split learning: its own blocks and the
        # activations); 0 when nothing was (a job that could not be encoded).
        sent = state_nbytes(self.global_state)
        down = [bytes_down.get(c, sent) for c in plan.client_ids]
        metrics["bytes_down"] = sum(down)
        up = [bytes_up.get(c, 0) for c in plan.client_ids]
        metrics["bytes_up"] = sum(up)
        # Per client, in the plan's order: each client's training job and reply as the
        # wire carried them (three flat lists, not a dict per client: 10,000 clients a
        # round stay about 1 MB). Secure aggregation's phases count in the totals only.
        metrics["bytes_by_client"] = {
            "clients": list(plan.client_ids),
            "up": up,
            "down": down,
        }
        if link is not None:
            # Besides training's job and reply (the reply without the update), the
            # stage's messages: every phase of secure aggregation, both ways.
            metrics["bytes_up"] += sum(link.bytes_up.values())
            metrics["bytes_down"] += sum(link.bytes_down.values())
        if self.secagg is not None and failures:
            # The server of secure aggregation cannot see why an update was refused
            # (the client checked it before masking): only that the client dropped.
            metrics["failed_clients"] = {str(k): "dropped" for k in sorted(failures)}
        if self.withholds_cohort:
            # Client-level DP's accountant assumes the sampled cohort stays secret
            # (amplification by sampling): its size, who failed, how many examples and
            # bytes it moved would all reveal it. They stay with the server.
            for key in COHORT_KEYS:
                metrics.pop(key, None)
            if "round_failed" in metrics:
                # Why a round failed counts its cohort ("only 2 of 5 clients survived").
                metrics["round_failed"] = WITHHELD_FAILURE
            # Secure aggregation's figures count survivors and dropouts, and its bytes
            # and seconds grow with the cohort: all but the public clip range go too.
            for key in [k for k in metrics if k.startswith("secagg/")]:
                if key != "secagg/clip_range":
                    del metrics[key]
        elif self.privacy is not None:
            # Under sample-level DP one example more or less is the difference the
            # guarantee hides, and the cohort's example count, exact and noiseless, would
            # show it (with known cohorts, each client's count); partition.json withholds
            # the counts for the same reason (experiment.WITHHELD_UNDER_DP).
            metrics.pop("examples", None)
        if self.privacy is None and self.secagg is None:
            # Per-client losses and norms are computed on private data and released
            # without noise; under DP or secure aggregation they stay on the clients.
            # A client's figure never overwrites one of the loop's own (round, bytes...).
            means = _weighted_means(client_metrics)
            metrics.update({k: v for k, v in means.items() if k not in metrics})
        if self.privacy is not None:
            metrics.update(self.privacy.record(plan.client_ids, aggregated))
        # A failed step still took its clients' time (FedBuff: their arrivals are spent).
        self.schedule.end(r, self, step, metrics)
        if self.withholds_cohort:
            # A round lasts longer the more clients it trains (with a clock, as long as
            # its slowest sampled client): its duration would tell the cohort apart too.
            metrics.pop("sim_time", None)
        else:
            metrics["seconds"] = time.perf_counter() - t0
        return RoundRecord(r, metrics, audit)

    @property
    def deployment_run_id(self) -> str | None:
        """What a deployment names this run to its nodes, which file their keys and
        private state under it: the ledger's run id, else one derived from the noise key
        (HMAC-SHA256: it reveals nothing of the key), both kept across a resume. None
        without either (``noise_seed: root`` and no ledger): nodes then keep nothing of
        the run past their Flower Context."""
        if self.audit is not None:
            return self.audit.run_id
        if self.noise_key is None:
            return None
        return keyed_run_id(self.noise_key)

    def local_work(
        self,
        start: StateDict,
        round: int,
        keys: ClientKeys | None = None,
        side: ClientSide | None = None,
    ) -> LocalWork:
        """The ``LocalWork`` of clients sent ``start`` in ``round`` (keys and client side
        default to the run's)."""
        if keys is None and self.audit is not None:
            keys = self.audit.client_keys()
        return LocalWork(
            self.task,
            start,
            self.transforms,
            self.local_steps,
            self.local_epochs,
            round,
            self.noise_key,
            self.faults,
            keys,
            side or self.client_side or self._local_side(),
            secure=self.stage is not None,
            max_update_norm=self.max_update_norm,
            downlink=self.downlink,
            initial_state=None if self.downlink is None else self.downlink.initial,
        )

    def _server_step(self, r: int, agg: Aggregate, metrics: dict[str, Any]) -> None:
        """Server halves of the transforms (reverse order), then ``strategy.apply``."""
        if agg.num_clients == 0 and not agg.delta:
            # A fixed-denominator mean of no client is zero; its server halves
            # (e.g. DP noise) must still run on every tensor of the model.
            agg.delta = {
                k: torch.zeros_like(v, dtype=torch.float64)
                for k, v in self.global_state.items()
                if v.is_floating_point()
            }
        ctx = TransformContext(
            round=r,
            client_id=None,
            seed=derive_seed(self.seed, "server", r),
            num_clients=len(self.clients),
            noise_key=self.noise_key,
            noised=agg.noised,
        )
        for transform in reversed(self.transforms):
            agg.delta, t_metrics = transform.on_server(agg.delta, ctx)
            metrics.update(
                {f"{type(transform).__name__.lower()}/{k}": v for k, v in t_metrics.items()}
            )
        if agg.num_clients == 0 and not any(bool(v.any()) for v in agg.delta.values()):
            # Nothing arrived and no server half added anything (no DP noise): no delta,
            # so a server optimizer leaves the model and its moments as they were,
            # instead of stepping its momentum on a zero.
            agg.delta = {}
        self.global_state = self.strategy.apply(r, self.global_state, agg)
        # Per-client tensors a strategy hands back (e.g. a cluster's shared head
        # and tail in clustered split learning) replace those clients' private state.
        for cid, tensors in agg.private_updates.items():
            self.private_states[cid] = {**self.private_states.get(cid, {}), **tensors}
        metrics.update({f"strategy/{k}": v for k, v in agg.metrics.items()})
        metrics["examples"] = agg.num_examples

    def _server_free_round(
        self, client_metrics: list[dict[str, float]], metrics: dict[str, Any]
    ) -> None:
        """A round without server aggregation (gossip) counts the examples it trained on."""
        metrics["examples"] = int(sum(m["examples"] for m in client_metrics))

    def _local_side(self) -> ClientSide:
        """The client side made of this federation's own objects (the process pool
        compares fingerprints, so a fresh wrapper each round reuses its workers)."""
        initial = None if self.downlink is None else self.downlink.initial
        return LocalClientSide(
            ClientKit(self.task, self.transforms, self.faults, self.clients, initial)
        )

    # -- state ---------------------------------------------------------------

    def load_global_into_task(self) -> Task:
        """Load the weights to sample with (the global state, or the strategy's average).

        The task's private tensors (personal layers, partial-federation blocks) are set to
        their initial values, not to whichever client this instance trained last: the
        global model is the federated tensors alone. Each client's own model is
        ``fedgen.engine.client_models.load_client_model``.
        """
        self.task.load_state(self.task.initial_private_state())
        self.task.load_state(self.strategy.evaluation_state(self.global_state))
        if getattr(self.task, "samples_jointly", False):
            # A column-split task samples with every client's own part: the clients'
            # synthetic columns of the same rows, joined as they would be released.
            for private in self.private_states.values():
                self.task.load_state(private)
        return self.task

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically after ``next_round - 1``."""
        return {
            "next_round": self.next_round,
            "global_state": {k: v.clone() for k, v in self.global_state.items()},
            "private_states": {str(k): v for k, v in self.private_states.items()},
            "strategy": self.strategy.state_dict(),
            "transforms": [t.state_dict() for t in self.transforms],
            "history": self.history,
            "schedule": self.schedule.state_dict(),
            **({"downlink": self.downlink.state_dict()} if self.downlink is not None else {}),
            "noise_key": key_to_state(self.noise_key),
            **({"privacy": self.privacy.state_dict()} if self.privacy is not None else {}),
            **({"audit": self.audit.state_dict()} if self.audit is not None else {}),
            **({"backend": backend} if (backend := self.backend.state_dict()) else {}),
            # A frozen pretrained base is never checkpointed: only its digest, so a resume
            # on another base is refused.
            **({"frozen_digest": digest} if (digest := self._frozen_digest()) else {}),
        }

    def _frozen_digest(self) -> str | None:
        frozen = self.task.frozen_tensors()
        return state_digest(frozen) if frozen else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (the caller checked the experiment matches)."""
        expected = self.global_state
        loaded = state["global_state"]
        if expected.keys() != loaded.keys() or any(
            expected[k].shape != loaded[k].shape for k in expected
        ):
            from fedgen.errors import CheckpointError

            raise CheckpointError(
                "checkpoint tensors do not match this experiment's model; "
                "resume with the config the run was started with"
            )
        self.global_state = dict(loaded)
        # A checkpoint from before noise keys were kept was seeded from the root seed.
        try:
            self.noise_key = key_from_state(state.get("noise_key"))
        except ValueError as exc:
            from fedgen.errors import CheckpointError

            raise CheckpointError(f"the checkpoint's DP noise key is malformed: {exc}") from exc
        logged, loaded = state.get("frozen_digest"), self._frozen_digest()
        if logged != loaded:
            from fedgen.errors import CheckpointError

            raise CheckpointError(
                f"the checkpoint was trained on another frozen base model (digest "
                f"{str(logged)[:12]}..., loaded {str(loaded)[:12]}...); load the base the "
                "run started with"
            )
        self.private_states = {int(k): v for k, v in state["private_states"].items()}
        self.backend.load_state_dict(state.get("backend", {}))
        self.strategy.load_state_dict(state["strategy"])
        # A strategy's own state (e.g. a moving average) must still give a whole model,
        # or the next round or sample would fail far from the cause.
        sampled = self.strategy.evaluation_state(self.global_state)
        if sampled.keys() != self.global_state.keys() or any(
            not isinstance(sampled[k], torch.Tensor) or sampled[k].shape != v.shape
            for k, v in self.global_state.items()
        ):
            from fedgen.errors import CheckpointError

            raise CheckpointError(
                "the checkpoint's strategy state (e.g. its moving average, ema) does not cover "
                "this model's tensors; resume with the run folder's own config.yaml"
            )
        for t, s in zip(self.transforms, state["transforms"], strict=True):
            t.load_state_dict(s)
        if self.privacy is not None:
            if "privacy" not in state:
                from fedgen.errors import CheckpointError

                raise CheckpointError(
                    "the checkpoint holds no privacy accounting, but this run uses DP; "
                    "resume with the run folder's own config.yaml"
                )
            sample = self.privacy.sample
            planned = None if sample is None else (sample.noise_multiplier, sample.client_noise)
            self.privacy.load_state_dict(state["privacy"])
            # The recipe may now calibrate another DP-SGD sigma (e.g. for other rounds);
            # the run keeps its own, and clients built elsewhere must train with it too.
            changed = sample is not None and planned != (
                sample.noise_multiplier,
                sample.client_noise,
            )
            if changed and self.client_side is not None:
                assert sample is not None
                self.client_side.keep_dpsgd_noise(sample.noise_multiplier, sample.client_noise)
        if self.audit is not None:
            if "audit" not in state:
                from fedgen.errors import CheckpointError

                raise CheckpointError(
                    "the checkpoint holds no ledger keys (it predates the ledger); "
                    + NEW_RUN_ADVICE
                )
            self.audit.load_state_dict(state["audit"])
        elif "audit" in state:
            # The run kept a ledger: going on without one would leave its later rounds
            # out of the log (a hand-edited config.yaml is the way here).
            from fedgen.errors import CheckpointError

            raise CheckpointError(
                "the checkpoint belongs to a run that keeps a ledger, but this one does not; "
                "set ledger: true in the run folder's config.yaml (a resume cannot turn the "
                "ledger off)"
            )
        # Checkpoints from before schedules hold none: they were synchronous.
        self.schedule.load_state_dict(state.get("schedule", {}))
        if self.downlink is not None:
            if "downlink" not in state:
                from fedgen.errors import CheckpointError

                raise CheckpointError(
                    "the checkpoint holds no downlink state, but this run compresses the "
                    "downlink (federation.downlink); resume with the run folder's config.yaml"
                )
            self.downlink.load_state_dict(state["downlink"])
        self.next_round = int(state["next_round"])
        self.history = list(state["history"])


def _failed_client(metrics: dict[str, Any]) -> str:
    """``; client N: why`` for a round's first failed client, or nothing."""
    failed = metrics.get("failed_clients") or {}
    if not failed:
        return ""
    client, why = next(iter(failed.items()))
    return f"; client {client}: {why}"


def _plan_config(
    plan: RoundPlan, local_steps: int | None, local_epochs: float | None
) -> dict[str, Any]:
    """The round's configuration as the ledger records it (plain JSON)."""
    return {
        "local_steps": local_steps,
        "local_epochs": local_epochs,
        "clients": {
            str(ins.client_id): {"seed": ins.seed, **_plain(ins.config)}
            for ins in plan.instructions
        },
    }


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """Keep what JSON can carry exactly; describe the rest."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        exact = isinstance(v, bool | int | str) or v is None
        if exact or (isinstance(v, float) and math.isfinite(v)):
            out[str(k)] = v
        else:
            out[str(k)] = repr(v)
    return out


def _count(value: object) -> int:
    """A byte count a client reported, or 0 when it is not one."""
    return value if type(value) is int and value >= 0 else 0


#: A failed round's reason under client-level DP (the ledger keeps the real one).
WITHHELD_FAILURE = "no update was aggregated (the reason is withheld under client-level DP)"

#: Per-round metric keys that reveal the sampled cohort (withheld under client-level DP).
COHORT_KEYS = (
    "clients",
    "failures",
    "failed_clients",
    "examples",
    "bytes_up",
    "bytes_down",
    "bytes_by_client",
)


#: Where clients' own figures live: their losses, their step counts, and split
#: learning's per-iteration figures. A client figure named otherwise is recorded as
#: ``client/NAME``: a client must not write a figure the loop, a schedule or the
#: evaluator owns (``round_failed`` would count a good round as failed; ``eval_seconds``
#: would make its forged ``tstr_accuracy`` the summary's).
CLIENT_METRIC_NAMESPACES = ("loss/", "split/")
CLIENT_METRIC_NAMES = frozenset({"steps"})


def client_metric_name(name: str) -> str:
    """The name a client's figure ``name`` is recorded under (see ``CLIENT_METRIC_NAMESPACES``)."""
    if name in CLIENT_METRIC_NAMES or name.startswith(CLIENT_METRIC_NAMESPACES):
        return name
    return f"client/{name}"


def _weighted_means(client_metrics: list[dict[str, float]]) -> dict[str, float]:
    """Example-weighted means of per-client numeric metrics (e.g. losses), each under
    ``client_metric_name``.

    Each key is averaged over the clients that reported it: a client without a
    figure (e.g. a loss its task does not have) is left out, not counted as 0.
    """
    means: dict[str, float] = {}
    keys = {k for m in client_metrics for k in m if k != "examples"}
    for key in sorted(keys):
        reporting = [m for m in client_metrics if key in m]
        total = sum(m["examples"] for m in reporting)
        if total > 0:
            means[client_metric_name(key)] = sum(m[key] * m["examples"] for m in reporting) / total
        else:
            means[client_metric_name(key)] = sum(m[key] for m in reporting) / len(reporting)
    return means
