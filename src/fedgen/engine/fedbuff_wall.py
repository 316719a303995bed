"""FedBuff on the wall clock: jobs stay in flight across server steps, as on real devices.

The same algorithm as ``fedgen.engine.fedbuff`` (Nguyen et al., AISTATS 2022:
``concurrency`` clients train at once, a server step every ``buffer_size``
arrivals, an update ``s`` versions stale weighted ``1 / (1 + s) ** a``), but the
order of arrivals is the order in which results really come back from a backend
that keeps jobs running between rounds (``supports_async``: the process pool,
Flower SuperNodes). A slow client keeps training on the version it was sent;
nothing waits for a cohort or for the server step.

Results are read one at a time: the moment one arrives, its place (up to
``concurrency`` in flight) goes to a client drawn from every idle one (the one that
just arrived among them), sent the server's current model: version ``r`` during
step ``r``; for the arrival that fills the buffer, version ``r + 1`` after the
step. The loop takes one update per client a step, so a client's second result
within one step is held for the next. The draws are made as on the simulated
clock, by a generator keyed by the run's seed and the arrival (no generator state
to checkpoint).

Real timing is not reproducible: two runs of one recipe differ in who arrives
when. A checkpoint keeps the model and the counts, not the jobs in flight: a
resumed run sends fresh jobs from the checkpointed model. Each client signs its
update for the round it was sent its work in; the ledger records that round
(``signed_round``) beside the round the update was aggregated in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedgen.config import FedBuffConfig
from fedgen.engine.fedbuff import FedBuffSchedule
from fedgen.engine.schedule import Job, RoundLoop, Step, strategy_client_config
from fedgen.errors import ConfigError
from fedgen.seeding import derive_seed, numpy_rng
from fedgen.types import ClientInstruction, ClientResult, RoundPlan, StateDict


@dataclass(frozen=True)
class _Sent:
    """A job in flight: the version its client started from, its seed and config."""

    version: int
    seed: int
    config: dict[str, Any]


class WallClockFedBuff(FedBuffSchedule):
    """A round is one FedBuff server step over the next ``buffer_size`` real arrivals."""

    def __init__(self, config: FedBuffConfig, client_ids: Sequence[int], seed: int) -> None:
        # The simulated clock is never read: arrival times are real.
        super().__init__(config, clock=None, client_ids=list(client_ids), seed=seed)  # type: ignore[arg-type]
        self.sent: dict[int, _Sent] = {}
        self.states: dict[int, StateDict] = {}
        #: Results of clients that arrived twice in one step, for the next step.
        self.held: list[ClientResult] = []
        self.began: float | None = None

    def check(self, fed: RoundLoop) -> None:
        super().check(fed)
        if not fed.backend.supports_async:
            raise ConfigError(
                f"federation.fedbuff.timing=wall needs a backend that keeps jobs in flight "
                f"between rounds (process_pool or flower); {type(fed.backend).__name__} "
                "runs one round at a time: use one of those, or timing: simulated"
            )

    def begin(self, r: int, fed: RoundLoop) -> Step:
        if self.began is None:
            self.began = time.monotonic()
        if not self.sent:
            # The first round (or the first after a resume) sends the first jobs.
            self._send(fed, self.client_ids, r, (r,))
        arrived: list[ClientResult] = []
        groups: dict[int, list[ClientResult]] = {}
        staleness: dict[int, int] = {}
        sent_as: dict[int, _Sent] = {}
        starts: dict[int, StateDict] = {}
        held, self.held = self.held, []
        while len(arrived) < self.buffer_size:
            res = held.pop(0) if held else next(iter(fed.backend.arrivals(1)), None)
            if res is None:
                break  # nothing left in flight
            if res.client_id in sent_as:
                self.held.append(res)  # its second result this step: the next step's
                continue
            arrived.append(res)
            sent = self.sent.pop(res.client_id)
            groups.setdefault(sent.version, []).append(res)
            staleness[res.client_id] = r - sent.version
            sent_as[res.client_id] = sent
            starts[sent.version] = self.states[sent.version]
            self.jobs_done[res.client_id] = self.jobs_done.get(res.client_id, 0) + 1
            if len(arrived) < self.buffer_size:
                # Its place is filled at once, from the model the server has now.
                idle = [c for c in self.client_ids if c not in self.sent]
                self._send(fed, idle, r, (r, "arrival", len(arrived) - 1))
        self.held = held + self.held
        jobs = [
            Job(
                RoundPlan(
                    r,
                    [
                        ClientInstruction(
                            res.client_id,
                            sent_as[res.client_id].seed,
                            sent_as[res.client_id].config,
                        )
                        for res in rs
                    ],
                ),
                starts[v],
                v,
                results=rs,
            )
            for v, rs in sorted(groups.items())
        ]
        plan = RoundPlan(r, [ins for job in jobs for ins in job.plan.instructions])
        return Step(plan, jobs, {"staleness": staleness, "arrived": [x.client_id for x in arrived]})

    def end(self, r: int, fed: RoundLoop, step: Step, metrics: dict[str, Any]) -> None:
        arrived: list[int] = step.notes["arrived"]
        # The place of the arrival that filled the buffer goes to a client drawn from every
        # idle one (it, and those not sent since an earlier draw passed them over), sent
        # the new model: re-sending only arrivals would leave the first draw's others idle.
        idle = [c for c in self.client_ids if c not in self.sent]
        self._send(fed, idle, r + 1, (r, "arrival", max(len(arrived) - 1, 0)))
        assert self.began is not None
        stale = [float(s) for s in step.notes["staleness"].values()] or [0.0]
        metrics["wall_time"] = time.monotonic() - self.began
        metrics["staleness_mean"] = sum(stale) / len(stale)
        metrics["staleness_max"] = max(stale)
        metrics["in_flight"] = len(self.sent)

    def _send(
        self, fed: RoundLoop, idle: Sequence[int], version: int, draw: tuple[str | int, ...]
    ) -> None:
        """Send idle clients (up to ``concurrency`` in flight) the model of ``version``;
        ``draw`` names the event whose generator picks them when places are fewer."""
        free = self.concurrency - len(self.sent)
        chosen = sorted(idle)
        if free < len(chosen):
            rng = numpy_rng(self.seed, "fedbuff", "dispatch", *draw)
            chosen = sorted(rng.choice(chosen, size=free, replace=False).tolist())
        if not chosen:
            return
        self.states[version] = fed.global_state
        work = fed.local_work(fed.global_state, version)
        config = strategy_client_config(fed, version)
        for cid in chosen:
            again = self.jobs_done.get(cid, 0)
            seed = derive_seed(self.seed, "round", version, "client", cid, "job", again)
            self.sent[cid] = _Sent(version, seed, config)
            fed.backend.submit(
                ClientInstruction(cid, seed, dict(config)), work, fed.clients, fed.private_states
            )
        live = {s.version for s in self.sent.values()}
        self.states = {v: st for v, st in self.states.items() if v in live}

    # -- state: the model is the loop's; jobs in flight are not kept ------------------

    def state_dict(self) -> dict[str, Any]:
        return {"jobs_done": {str(k): v for k, v in self.jobs_done.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.jobs_done = {int(k): int(v) for k, v in state.get("jobs_done", {}).items()}
        self.sent, self.states, self.held = {}, {}, []
