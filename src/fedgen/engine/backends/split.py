"""Split-learning backend: the clients of a round train one U-shaped GAN together.

HuSCF-GAN (Tawfilis, Amer, El-Aasser, Elshabrawy 2025, arXiv 2507.12979): every
client keeps the first and last blocks of the generator and discriminator
(labels, images and losses stay local), the server runs the middle blocks for
all clients at once, and only activations and gradients cross the wire. Each
client's cut comes from its device profile and the analytic latency search
(``fedgen.split.cut_plan``).

Per round, the backend loads the server's blocks from the global state and
each client's head and tail from its private state (the global state where it
has none: before any clustered round, or under FedAvg), runs the local
iterations of all clients in lock-step, and yields one ``ClientResult`` per
client: its *view* of the whole networks minus the global state as the update,
its own blocks' keys as ``private_keys``, and the server-side D3 activations'
batch mean as ``extras["d3"]`` (what the KLD-clustered strategy clusters on).
Optimizers start fresh every round, unless ``keep_optimizers`` carries them (then
their state is checkpointed with the backend's), so a resumed run is bit-identical.
The task must expose ``generator_blocks()``, ``discriminator_blocks()``, ``latent_dim``
and ``capture_block`` (``fedgen.tasks.split_gan.HuscfGan`` does).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.base import Backend, LocalWork
from fedgen.engine.backends.local_training import local_steps_for
from fedgen.engine.backends.signing import sign_result
from fedgen.engine.proximal import anchored_at_start, proximal_mu, proximal_term
from fedgen.errors import ConfigError
from fedgen.registry import BACKENDS
from fedgen.seeding import derive_seed
from fedgen.split.cut_plan import CutPlan, plan_cuts
from fedgen.split.messages import Channel
from fedgen.split.trainer import UShapedGanTrainer
from fedgen.split.views import (
    capture_means,
    client_keys,
    client_view,
    load_client,
    load_server,
    trained_parameters,
)
from fedgen.tasks.base import Task
from fedgen.transforms.base import TransformContext
from fedgen.types import ClientResult, RoundPlan, StateDict, state_nbytes

log = logging.getLogger(__name__)


@BACKENDS.register("split")
class SplitBackend(Backend):
    """U-shaped split training of a block task (module docstring).

    Args:
        cuts: ``"exact"`` (minimum analytic latency), ``"genetic"`` (the published
            GA), or 4-bit cuts ``[G head, G tail, D head, D tail]`` for all clients
            (one list) or per client.
        devices: YAML file of device profiles; None uses the published seven.
        profile_seed: seed of the profile assignment (and of the GA).
        reproduce_slip: time the server's block-2 backward with block 4's FLOPs,
            as the published code does (for the reported latency only).
        drop_after: fault injection for tests and benchmarks: ``{client: k}`` makes
            the client drop out after its ``k``-th message of every round.
        keep_optimizers: carry every Adam's moments and step count from round to round
            (checkpointed), as the published HuSCF-GAN code does (its optimizers are made
            once); default false, FedAvg's convention: fresh optimizers each round. It
            needs every client in every round.
    """

    class Params(BaseModel):
        """The recipe's ``backend.params`` of ``split`` (see Args)."""

        model_config = ConfigDict(extra="forbid")

        cuts: Literal["exact", "genetic"] | list[list[int]] = "exact"
        devices: str | None = None
        profile_seed: int = 0
        reproduce_slip: bool = False
        drop_after: dict[int, int] | None = None
        keep_optimizers: bool = False

    def __init__(
        self,
        cuts: str | list[list[int]] = "exact",
        devices: str | None = None,
        profile_seed: int = 0,
        reproduce_slip: bool = False,
        drop_after: dict[Any, int] | None = None,
        keep_optimizers: bool = False,
    ) -> None:
        if isinstance(cuts, str) and cuts not in ("exact", "genetic"):
            raise ConfigError(
                f"backend cuts={cuts!r}: use 'exact', 'genetic' or a list of 4-bit cuts"
            )
        if devices is not None and not Path(devices).is_file():
            raise ConfigError(
                f"backend devices={devices!r} does not exist; give a YAML file like "
                "configs/huscf/devices.yaml, or null for the published profiles"
            )
        self.cuts = cuts
        self.devices = devices
        self.profile_seed = profile_seed
        self.reproduce_slip = reproduce_slip
        try:
            self.drop_after = {int(k): int(v) for k, v in (drop_after or {}).items()}
        except (TypeError, ValueError):
            raise ConfigError(
                f"backend drop_after={drop_after!r}: use a mapping client id -> message count"
            ) from None
        if keep_optimizers and self.drop_after:
            raise ConfigError(
                "backend.params.keep_optimizers with drop_after: a dropped client changes "
                "the round's cohort; drop drop_after, or keep_optimizers: false"
            )
        self.keep_optimizers = keep_optimizers
        #: The optimizers' state a checkpoint restored, loaded into the first trainer.
        self._restored: dict[str, Any] | None = None
        self._stepped: UShapedGanTrainer | None = None
        self.plan: CutPlan | None = None
        self._index: dict[int, int] = {}
        self._trainer: UShapedGanTrainer | None = None
        self._trainer_ids: tuple[int, ...] = ()

    # -- setup -----------------------------------------------------------------

    def cut_plan(self, task: Task, client_ids: Sequence[int]) -> CutPlan:
        """Profiles and cuts of every client of the federation (computed once)."""
        if self.plan is None:
            _check_task(task)
            ids = sorted(client_ids)
            self._index = {c: i for i, c in enumerate(ids)}
            # Costed in the compute dtype: bfloat16 activations cross the cut at 2 bytes.
            with task.autocast():
                self.plan = plan_cuts(
                    task.generator_blocks(),  # type: ignore[attr-defined]
                    task.discriminator_blocks(),  # type: ignore[attr-defined]
                    task.latent_dim,  # type: ignore[attr-defined]
                    task.params.batch_size,
                    len(ids),
                    self.cuts,
                    self.devices,
                    self.profile_seed,
                    self.reproduce_slip,
                )
            log.info("split cuts (G head, G tail, D head, D tail): %s", self.plan.bits.tolist())
        return self.plan

    def trainer(self, task: Task, ids: Sequence[int], plan: CutPlan) -> UShapedGanTrainer:
        """The trainer for this cohort, reused while the cohort stays the same."""
        key = tuple(ids)
        if self._trainer is None or key != self._trainer_ids:
            cuts = {c: plan.cuts(self._index[c]) for c in ids}
            self._trainer = UShapedGanTrainer(
                task.generator_blocks(),  # type: ignore[attr-defined]
                task.discriminator_blocks(),  # type: ignore[attr-defined]
                {c: g for c, (g, _) in cuts.items()},
                {c: d for c, (_, d) in cuts.items()},
                task.latent_dim,  # type: ignore[attr-defined]
                capture_block=task.capture_block,  # type: ignore[attr-defined]
                aux_weight=float(getattr(task.params, "aux_weight", 0.0)),
            )
            self._trainer_ids = key
        return self._trainer

    def _check_whole_cohort(
        self, plan: RoundPlan, work: LocalWork, clients: dict[int, ClientData]
    ) -> None:
        """Kept optimizers belong to one trainer of every client: refuse what changes it."""
        if sorted(plan.client_ids) != sorted(clients):
            raise ConfigError(
                f"backend.params.keep_optimizers needs every client in every round, but "
                f"round {plan.round} plans {len(plan.client_ids)} of {len(clients)}; set "
                "strategy.params.fraction: 1.0, or keep_optimizers: false"
            )
        if work.faults is not None:
            raise ConfigError(
                "backend.params.keep_optimizers with injected faults: a crashed client "
                "changes the round's cohort; drop the faults, or keep_optimizers: false"
            )

    def state_dict(self) -> dict[str, Any]:
        """The kept optimizers' state (``keep_optimizers``), else nothing."""
        if not self.keep_optimizers:
            return {}
        if self._stepped is not None:
            return {"optimizers": self._stepped.optimizer_state()}
        return {"optimizers": self._restored} if self._restored is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hold a checkpoint's optimizer state for the next round's trainer."""
        self._restored = state.get("optimizers")
        self._stepped = None

    # -- one round ---------------------------------------------------------------

    def run(
        self,
        plan: RoundPlan,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> Iterator[ClientResult]:
        if self.keep_optimizers:
            self._check_whole_cohort(plan, work, clients)
        # Injected faults (``fedgen.engine.faults``), drawn per client as run_client does:
        # a client that crashes before training never joins the joint pass.
        faults = {
            ins.client_id: work.faults.draw(ins.seed) if work.faults is not None else None
            for ins in plan.instructions
        }
        ids = [c for c in plan.client_ids if faults[c] != "crash_before"]
        if len(ids) < len(plan.client_ids):
            # Results still come in plan order: the crashed clients' failures among them.
            yield from self._with_crashed(plan, work, clients, private_states, faults, ids)
            return
        if not ids:
            return
        task = work.task
        cut_plan = self.cut_plan(task, list(clients))
        trainer = self.trainer(task, ids, cut_plan)
        load_server(trainer, work.global_state)
        blocks_down: dict[int, int] = {}  # bytes of each client's blocks, sent at round start
        own_start: dict[int, StateDict] = {}  # each client's own blocks where they started
        for c in ids:
            private = private_states.get(c)
            sent = {**work.global_state, **private} if private else work.global_state
            load_client(trainer, c, sent)
            own_start[c] = {k: sent[k] for k in client_keys(trainer, c)}
            blocks_down[c] = state_nbytes({k: sent[k] for k in client_keys(trainer, c)})
        config = plan.instructions[0].config
        lr = float(config.get("lr", task.params.lr))
        fresh = trainer is not self._stepped  # its optimizers have not stepped yet
        if fresh or not self.keep_optimizers:
            trainer.reset_optimizers(lr, task.params.betas)
        if fresh and self.keep_optimizers and self._restored is not None:
            trainer.load_optimizer_state(self._restored)  # where the resumed run stopped
            self._restored = None
        self._stepped = trainer
        trainer.set_lr(lr)
        # FedProx: every block is pulled toward the weights it started from.
        mu = proximal_mu(plan.instructions[0])
        anchored = anchored_at_start(trained_parameters(trainer, ids)) if mu else []
        trainer.channel = channel = Channel(drop_after=dict(self.drop_after))

        steps = {c: local_steps_for(work, clients[c].num_examples) for c in ids}
        failures: dict[int, str] = {}
        data_iters: dict[int, Iterator[tuple[torch.Tensor, torch.Tensor]]] = {}
        latents: dict[int, torch.Generator] = {}
        for ins in plan.instructions:
            gen = torch.Generator().manual_seed(ins.seed)
            data_iters[ins.client_id] = clients[ins.client_id].batches(task.params.batch_size, gen)
            latents[ins.client_id] = torch.Generator().manual_seed(
                derive_seed(ins.seed, "split", "latent")
            )
        sums = {c: [0.0, 0.0, 0.0] for c in ids}
        done = dict.fromkeys(ids, 0)
        features: dict[int, torch.Tensor] = {}
        wall: list[float] = []
        cpu: list[float] = []
        traffic: list[int] = []
        for it in range(max(steps.values())):
            batches = {}
            for c in ids:
                if c in failures or it >= steps[c]:
                    continue
                try:
                    images, labels = next(data_iters[c])
                except Exception as exc:  # a client that cannot read its data fails alone
                    failures[c] = f"{type(exc).__name__}: {exc}"
                    continue
                batches[c] = (images * 2 - 1, labels)  # [-1, 1], the generator's Tanh range
            if not batches:
                break
            c0 = time.process_time()
            with proximal_term(anchored, mu), task.autocast():
                res = trainer.step(batches, latents)
            cpu.append(time.process_time() - c0)
            wall.append(res.seconds)
            traffic.append(res.bytes_up + res.bytes_down)
            for c, reason in res.failures.items():
                failures.setdefault(c, f"dropped out in iteration {it}: {reason}")
            for c, losses in res.client_losses.items():
                done[c] += 1
                for i, v in enumerate(losses):
                    sums[c][i] += v
            features.update(capture_means(res.features))

        round_metrics = {
            "split/iterations": float(len(wall)),
            "split/seconds_per_iteration": statistics.fmean(wall) if wall else 0.0,
            "split/cpu_seconds_per_iteration": statistics.fmean(cpu) if cpu else 0.0,
            "split/bytes_per_iteration": statistics.fmean(traffic) if traffic else 0.0,
            "split/latency_analytic": cut_plan.latency([self._index[c] for c in ids]),
        }
        for ins in plan.instructions:
            c = ins.client_id
            if faults[c] == "crash_after":
                failures.setdefault(c, "InjectedFault: injected crash after training")
            if c in failures:
                log.warning("client %d failed in round %d: %s", c, plan.round, failures[c])
                # What crossed before it left: its blocks, then activations and gradients.
                yield ClientResult(
                    c,
                    clients[c].num_examples,
                    failure=failures[c],
                    bytes_up=channel.up_by_client.get(c, 0),
                    bytes_down=blocks_down[c] + channel.down_by_client.get(c, 0),
                )
                continue
            yield self._result(
                c,
                work,
                clients[c],
                ins.seed,
                len(clients),
                trainer,
                channel,
                {
                    **round_metrics,
                    "loss/discriminator": (sums[c][0] + sums[c][1]) / max(done[c], 1),
                    "loss/generator": sums[c][2] / max(done[c], 1),
                    "steps": float(done[c]),
                },
                features.get(c),
                blocks_down[c],
                faults[c],
                own_start[c],
            )

    def _with_crashed(
        self,
        plan: RoundPlan,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
        faults: dict[int, str | None],
        ids: list[int],
    ) -> Iterator[ClientResult]:
        """The round of the clients in ``ids``, with a failure for each one that crashed
        before training, all in plan order."""
        trained = RoundPlan(plan.round, [i for i in plan.instructions if i.client_id in ids])
        results = {r.client_id: r for r in self.run(trained, work, clients, private_states)}
        for ins in plan.instructions:
            c = ins.client_id
            yield results.get(c) or ClientResult(
                c,
                clients[c].num_examples,
                failure="InjectedFault: injected crash before training",
            )

    def _result(
        self,
        cid: int,
        work: LocalWork,
        data: ClientData,
        seed: int,
        num_clients: int,
        trainer: UShapedGanTrainer,
        channel: Channel,
        metrics: dict[str, float],
        feature: torch.Tensor | None,
        blocks_down: int,
        fault: str | None = None,
        own_start: StateDict | None = None,
    ) -> ClientResult:
        view = client_view(trainer, cid)
        update = {k: view[k] - work.global_state[k] for k in work.global_state}
        own = client_keys(trainer, cid)
        ctx = TransformContext(
            round=work.round,
            client_id=cid,
            seed=seed,
            num_clients=num_clients,
            noise_key=work.own_noise_key(cid),
        )
        # The strategy rebuilds a client's own blocks as global + update, but they started
        # from its private state (a cluster's head): the transforms act on what the round
        # trained, not on that standing offset (a clip would pull every head toward the
        # global one, and a client's share of the middle would shrink with it).
        start = own_start or {}
        offset = {
            k: start[k] - work.global_state[k]
            for k in start
            if k in own and not torch.equal(start[k], work.global_state[k])
        }
        if work.transforms and offset:
            update = {k: v - offset[k] if k in offset else v for k, v in update.items()}
        for transform in work.transforms:
            update, t_metrics = transform.on_client(update, ctx)
            metrics.update(
                {f"{type(transform).__name__.lower()}/{k}": v for k, v in t_metrics.items()}
            )
        if work.transforms and offset:
            update = {k: v + offset[k].to(v.dtype) if k in offset else v for k, v in update.items()}
        if work.faults is not None:
            update = work.faults.corrupt(fault, update)
        # Uploaded: its activations and gradients, then its own blocks for aggregation
        # (the server already holds the middle).
        bytes_up = channel.up_by_client.get(cid, 0) + state_nbytes(
            {k: v for k, v in update.items() if k in own}
        )
        # Downloaded: its own blocks at round start (``blocks_down``; the server keeps
        # the middle), then the activations and gradients the server sent it.
        bytes_down = blocks_down + channel.down_by_client.get(cid, 0)
        result = ClientResult(
            client_id=cid,
            num_examples=data.num_examples,
            update=update,
            metrics=metrics,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            extras={} if feature is None else {"d3": feature},
            private_keys=own,
        )
        # The client attests the whole update it is credited with (its own blocks and
        # the middle the server trained for it), as the round's ledger records it.
        sign_result(result, work.keys, work.round)
        return result


def _check_task(task: Task) -> None:
    missing = [
        a
        for a in ("generator_blocks", "discriminator_blocks", "latent_dim", "capture_block")
        if not hasattr(task, a)
    ]
    if missing:
        raise ConfigError(
            f"backend 'split' needs a task made of blocks ({', '.join(missing)} missing on "
            f"{type(task).__name__}); use task huscf_cgan"
        )
