"""Check an experiment's privacy settings before round 1, and wire what they need.

Every problem is gathered and raised together, each with its fix, as Opacus's
validators do: strategy/transform combinations whose sensitivity analysis fails,
out-of-range epsilon/delta, noise without clipping, modules Opacus cannot make
private, and budgets that do not fit one round. On success the noise multipliers are
calibrated, DP-SGD is attached to the task, and a ``PrivacyAccounting`` is returned
for the round loop.

Soundness rules for client-level DP (McMahan et al. 2018):
- one ``clip`` before ``client_dp`` (noise is scaled to the clip bound);
- a strategy whose aggregate each clipped client moves by at most C / (q N), whatever
  its example count: the strategy is asked (``Strategy.dp_problems``), never its class.
  FedAvg and the server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad: post-
  processing of the noised mean) hold it with ``weighted: false`` and
  ``fixed_denominator: true``; robust and clustered rules do not;
- independent (Poisson) client sampling: the accountant analyses Poisson subsampling at
  rate q = ``fraction`` (the strategy's sampler says whether it draws so); fixed-size
  sampling is rejected rather than accounted loosely;
- no other transform unless it declares ``dp_compatible = True`` (it must not change
  a clipped update's norm bound nor the noise): ``secagg`` does, listed last, so the
  server unmasks the exact sum before adding noise (its own placement rules are in
  ``fedgen.assembly.secagg``);
- not in centralized mode (one pooled "client" has no client-level guarantee).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fedgen.data.client_data import ClientData
from fedgen.privacy.accounting import (
    PrivacyAccountant,
    budget_problems,
    calibrate_noise,
    compute_epsilon,
)
from fedgen.privacy.budget import ClientLevelBudget, PrivacyAccounting, SampleLevelBudget
from fedgen.privacy.errors import PrivacyConfigError
from fedgen.strategies.base import Strategy
from fedgen.tasks.base import Task
from fedgen.transforms.base import UpdateTransform
from fedgen.transforms.clip import NormClip
from fedgen.transforms.dp import ClientLevelDP

# An empty Poisson batch is redrawn; its total chance over a run must stay this far
# below delta so the redraw cannot matter.
EMPTY_BATCH_SLACK = 0.01


def build_privacy(
    *,
    dpsgd: Any,
    task: Task,
    clients: Sequence[ClientData],
    strategy: Strategy | None,
    transforms: Sequence[UpdateTransform | None],
    rounds: int,
    local_steps: int | None,
    local_epochs: float | None,
    centralized: bool = False,
    problems: Sequence[str] = (),
) -> PrivacyAccounting | None:
    """Validate and wire the experiment's DP; None when it uses none.

    Args:
        dpsgd: the ``dpsgd`` section of the config (``DpSgdConfig``) or None.
        strategy, transforms: the built components; None for one that failed to build
            (its problem is in ``problems``; checks that need it are skipped).
        problems: problems already found while building components; raised with these.

    Raises:
        PrivacyConfigError: listing every problem found, each with its fix.
    """
    found = list(problems)
    client = None
    if strategy is not None and all(t is not None for t in transforms):
        built = [t for t in transforms if t is not None]
        client = _client_level(strategy, built, len(clients), rounds, centralized, found)
        if client is not None or any(isinstance(t, ClientLevelDP) for t in built):
            found.extend(_unnoised_tensors(task))
    sample = _sample_level(dpsgd, task, clients, rounds, local_steps, local_epochs, found)
    if found:
        raise PrivacyConfigError(found, header="invalid experiment")
    if client is None and sample is None:
        return None
    return PrivacyAccounting(client=client, sample=sample)


def replay_problems(checkpoint_every: int, unit: str = "client") -> list[str]:
    """For a run under DP (``unit``: "client" for client-level, "example" for DP-SGD)
    that checkpoints every ``checkpoint_every`` rounds.

    The noise is keyed by the round (client-level: the server's; DP-SGD: each client's,
    with its batches), so that a resumed run is bit-identical. That is safe only if
    nothing of a round leaves the server before it is checkpointed: the checkpoint
    callback runs before the next round sends the state out and before the round's
    samples and figures are published, but with ``every > 1`` a crash would lose rounds
    already released, and training them again (other survivors, other start states)
    would draw the same noise over other updates, so two releases' difference would
    carry none, and the accountant, restored from the checkpoint, would not count the
    first release."""
    if checkpoint_every == 1:
        return []
    what = "client-level DP" if unit == "client" else "DP-SGD"
    return [
        f"{what}: checkpoint.every is {checkpoint_every}, but every round must be "
        "checkpointed before its model goes out: after a crash, rounds released but not "
        "checkpointed would be trained again with the same noise on other updates, and "
        "the difference of the two releases would carry no noise (nor would the accountant "
        "count the first); set checkpoint.every=1"
    ]


def _unnoised_tensors(task: Task) -> list[str]:
    """Integer tensors the clients send (a BatchNorm's step counter): client-level DP
    neither clips nor noises them, and their sum over a round reveals its cohort."""
    ints = sorted(k for k, v in task.federated_state().items() if not v.is_floating_point())
    if not ints:
        return []
    return [
        f"task: the model federates integer tensors ({', '.join(ints[:3])}"
        f"{', ...' if len(ints) > 3 else ''}) that client-level DP can neither clip nor "
        "noise, and whose sum over a round reveals the cohort; use a model without them "
        "(GroupNorm instead of BatchNorm), or keep those modules out of the federation"
    ]


def _client_level(
    strategy: Strategy,
    transforms: Sequence[UpdateTransform],
    num_clients: int,
    rounds: int,
    centralized: bool,
    problems: list[str],
) -> ClientLevelBudget | None:
    dps = [i for i, t in enumerate(transforms) if isinstance(t, ClientLevelDP)]
    clips = [i for i, t in enumerate(transforms) if isinstance(t, NormClip)]
    adaptive = [i for i in clips if transforms[i].adaptive]  # type: ignore[attr-defined]
    if not dps:
        if adaptive:
            # Adaptive clipping without DP still needs the fixed denominator for its count.
            found = strategy.dp_problems("adaptive clipping", need_independent_sampling=False)
            problems.extend(found)
            if not found:
                clip = transforms[adaptive[0]]
                assert isinstance(clip, NormClip)
                clip.bind(strategy.sampler.expected_clients(num_clients), 0.0)
        return None
    before = len(problems)
    if len(dps) > 1:
        problems.append("transforms: client_dp appears more than once; keep one")
    i_dp = dps[0]
    if not [i for i in clips if i < i_dp]:
        problems.append(
            "transforms: client_dp adds noise but no clip bounds the updates before it (a "
            "noise multiplier with no clipping protects nothing); add "
            "{name: clip, params: {max_norm: 1.0}} before client_dp"
        )
    elif len(clips) > 1 or clips[0] > i_dp:
        problems.append(
            "transforms: use exactly one clip, listed before client_dp (the noise is "
            "scaled to that clip's bound)"
        )
    for i, t in enumerate(transforms):
        if i in dps or i in clips or getattr(t, "dp_compatible", False):
            continue
        problems.append(
            f"transforms[{i}] ({type(t).__name__}) is not known to keep client-level DP "
            "sound (it may change a clipped update's norm or the noise); remove it, or "
            "declare dp_compatible = True on the transform class if it provably does not"
        )
    problems.extend(strategy.dp_problems("client-level DP", need_independent_sampling=True))
    if centralized:
        problems.append(
            "federation.centralized=true pools all data in one client: client-level DP "
            "protects nothing there; use dpsgd for example-level DP instead"
        )
    dp = transforms[i_dp]
    assert isinstance(dp, ClientLevelDP)
    if num_clients > 0 and dp.delta >= 1.0 / num_clients:
        problems.append(
            f"client_dp delta={dp.delta:g} is not below 1/(number of clients)="
            f"{1 / num_clients:g}: such a delta allows releasing a client outright; "
            "use e.g. delta=1e-5"
        )
    if len(problems) > before:
        return None
    clip = transforms[clips[0]]
    assert isinstance(clip, NormClip)
    q = strategy.sampler.sample_rate(num_clients)
    m = strategy.sampler.expected_clients(num_clients)
    bind_problems = dp.bind(clip, q, m, rounds)
    if bind_problems:
        problems.extend(bind_problems)
        return None
    return ClientLevelBudget(dp, q, PrivacyAccountant(dp.accountant))


def _sample_level(
    cfg: Any,
    task: Task,
    clients: Sequence[ClientData],
    rounds: int,
    local_steps: int | None,
    local_epochs: float | None,
    problems: list[str],
) -> SampleLevelBudget | None:
    if cfg is None:
        return None
    # Imported here: Opacus's per-sample machinery loads only for DP-SGD experiments.
    from fedgen.privacy.dpsgd import (
        attach_dpsgd,
        empty_batch_probability,
        module_problems,
        poisson_sample_rate,
    )

    before = len(problems)
    problems.extend(
        budget_problems(
            epsilon=cfg.epsilon,
            delta=cfg.delta,
            noise_multiplier=cfg.noise_multiplier,
            accountant=cfg.accountant,
            where="dpsgd.",
        )
    )
    if cfg.noise_multiplier is None and cfg.epsilon is None:
        problems.append("dpsgd needs noise_multiplier or epsilon (or both), e.g. dpsgd.epsilon=10")
    if cfg.noise_per_client and (cfg.epsilon is None or cfg.noise_multiplier is not None):
        problems.append(
            "dpsgd.noise_per_client calibrates each client's sigma from dpsgd.epsilon: give "
            "epsilon and leave noise_multiplier unset, or set noise_per_client=false"
        )
    if cfg.max_grad_norm is None:
        problems.append(
            "dpsgd.max_grad_norm is not set: DP-SGD noise is scaled to the per-sample clip "
            "bound, and a noise multiplier with no clipping protects nothing; set e.g. "
            "dpsgd.max_grad_norm=1.0"
        )
    elif not (cfg.max_grad_norm > 0 and math.isfinite(cfg.max_grad_norm)):
        problems.append(f"dpsgd.max_grad_norm={cfg.max_grad_norm}: must be a number > 0")
    problems.extend(module_problems(task))
    if task.params.compute_dtype != "float32":
        # Under autocast Opacus computes each example's gradient in bfloat16, so its norm
        # and clipped sum carry 8-bit rounding: the sensitivity the noise is scaled to
        # would no longer bound one example's contribution.
        problems.append(
            f"dpsgd clips each example's gradient, which task.params.compute_dtype="
            f"{task.params.compute_dtype} would compute in that dtype; set "
            "task.params.compute_dtype=float32 for DP-SGD"
        )
    batch = int(task.params.batch_size)
    rates = {c.client_id: poisson_sample_rate(batch, c.num_examples) for c in clients}
    sizes = {c.client_id: c.num_examples for c in clients}

    # A local step may draw several batches (a GAN's discriminator steps): every batch
    # is a noisy DP-SGD step the accountant counts.
    per_step = task.private_batches_per_step()

    def steps_of(cid: int) -> int:
        if local_steps is not None:
            return local_steps * per_step
        assert local_epochs is not None
        return max(1, math.ceil(local_epochs * sizes[cid] / batch)) * per_step

    if 0 < cfg.delta < 1:
        # delta bounds the chance of a total failure, e.g. each example released in the
        # clear with probability delta: that leaks delta * n examples of a client of n,
        # so delta must sit below 1/n for every client, the largest included.
        largest = max(sizes.values(), default=0)
        if largest > 0 and cfg.delta >= 1.0 / largest:
            problems.append(
                f"dpsgd.delta={cfg.delta:g} is not below 1/(examples of the largest "
                f"client)={1 / largest:g}; use e.g. delta={min(1e-5, 0.1 / largest):.1g}"
            )
        for cid, n in sorted(sizes.items()):
            taken = min(rounds, cfg.rounds_per_client or rounds)  # rounds it can take part in
            risk = taken * steps_of(cid) * empty_batch_probability(batch, n)
            if risk > EMPTY_BATCH_SLACK * cfg.delta:
                problems.append(
                    f"client {cid} ({n} examples) would draw an empty Poisson batch with "
                    f"probability {risk:.2g} over the run, not negligible against "
                    f"delta={cfg.delta:g}; raise task.params.batch_size"
                )
                break
    if len(problems) > before:
        return None
    z = cfg.noise_multiplier
    pairs = sorted({(rates[c], steps_of(c)) for c in rates})
    # The rounds one client takes part in at most: the noise is calibrated for them.
    taken = min(rounds, cfg.rounds_per_client or rounds)
    client_noise: dict[int, float] | None = None
    if z is None:
        try:
            # Clients with the same rate and steps share one calibration (the search
            # takes seconds under the PRV accountant).
            by_pair = {
                (q, s): calibrate_noise(cfg.epsilon, q, taken * s, cfg.delta, cfg.accountant)
                for q, s in pairs
            }
        except PrivacyConfigError as exc:
            problems.extend(f"dpsgd: {p}" for p in exc.problems)
            return None
        z = max(by_pair.values())
        if cfg.noise_per_client:
            client_noise = {c: by_pair[(rates[c], steps_of(c))] for c in sorted(rates)}
    elif cfg.epsilon is not None:
        first = max(compute_epsilon(z, q, s, cfg.delta, cfg.accountant) for q, s in pairs)
        if first > cfg.epsilon:
            problems.append(
                f"dpsgd: noise_multiplier={z} spends epsilon={first:.4g} in one round, more "
                f"than the budget epsilon={cfg.epsilon}; raise dpsgd.noise_multiplier or "
                "dpsgd.epsilon, or leave noise_multiplier unset to have it calibrated"
            )
            return None
    assert cfg.max_grad_norm is not None
    engine = attach_dpsgd(task, z, cfg.max_grad_norm, client_noise)
    return SampleLevelBudget(
        engine=engine,
        noise_multiplier=z,
        delta=cfg.delta,
        target=cfg.epsilon,
        mechanism=cfg.accountant,
        rates=rates,
        steps_of=steps_of,
        rounds_per_client=cfg.rounds_per_client,
        client_noise=client_noise,
    )
