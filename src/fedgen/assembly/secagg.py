"""Check where secure aggregation sits in an experiment, before round 1.

Secure aggregation (Bonawitz et al. 2017) hands the server one sum per round and
nothing else, so it composes only with parts that need nothing else: called from
``fedgen.experiment.build_experiment``, which raises these problems together with
every other component's (and the DP checks'), each with its fix.

Rules:
- one ``secagg``, listed last: last on the client (after ``clip``), first on the
  server (the sum is unmasked before ``client_dp`` adds noise);
- a strategy whose aggregation needs only a sum (``Strategy.needs``; the strategy is
  asked, never its class): not ``kld_clustered``, which clusters clients by their
  individual features, nor a robust rule (Krum, median, ...), which compares them;
- not the ``split`` backend (split learning exchanges activations, not updates) and
  not centralized mode (one pooled client: nothing to aggregate);
- a fixed-point range that clips nothing a ``NormClip`` let through: secagg's
  ``clip`` left unset (it then follows the NormClip bound every round, also when
  adaptive), or set >= ``max_norm`` with a fixed bound;
- the configuration resolves for every cohort the strategy can sample: the expected
  one (threshold) and the largest (modulus: a Poisson cohort can hold every client);
  under client-level DP, every cohort of 2 up to the largest (a round secure
  aggregation cannot run would fail instead of releasing its noised sum, and whether
  it fails would depend on who took part: a leak the accountant does not cover);
- under client-level DP, fixed-point rounding (up to one quantum per coordinate) can
  push a clipped update past the clip bound; ``client_dp`` is bound to that excess and
  adds noise for the larger sensitivity, and an excess above
  ``MAX_ROUNDING_EXCESS`` of the bound is rejected (raise ``modulus_bits``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

from fedgen.strategies.base import Needs, Strategy
from fedgen.transforms.base import UpdateTransform
from fedgen.transforms.clip import NormClip
from fedgen.transforms.dp import ClientLevelDP
from fedgen.transforms.secagg.errors import SecAggConfigError, SecAggSecurityWarning
from fedgen.transforms.secagg.transform import SecureAggregation

log = logging.getLogger(__name__)

#: Largest rounding excess over the clip bound accepted under client-level DP (1%).
MAX_ROUNDING_EXCESS = 0.01


def secagg_problems(
    *,
    strategy: Strategy | None,
    transforms: Sequence[UpdateTransform | None],
    backend: str,
    centralized: bool,
    num_clients: int,
    dimension: int,
) -> list[str]:
    """Every unsound use of ``secagg`` in the experiment, each with its fix; [] if none.

    On success an automatic range is bound to the pipeline's ``NormClip``, and the
    rounding excess of an update of ``dimension`` coordinates to ``client_dp``.
    ``strategy`` or a transform is None when it failed to build (checks needing it skip).
    """
    found = [i for i, t in enumerate(transforms) if isinstance(t, SecureAggregation)]
    if not found:
        return []
    problems: list[str] = []
    i_sa = found[0]
    secagg = transforms[i_sa]
    assert isinstance(secagg, SecureAggregation)
    if len(found) > 1:
        problems.append("transforms: secagg appears more than once; keep one, listed last")
    clips = [i for i, t in enumerate(transforms) if isinstance(t, NormClip)]
    if any(i > i_sa for i in clips):
        problems.append(
            "transforms: secagg is listed before clip, so the updates it masks are not "
            "clipped yet and the server could never clip them; order the transforms "
            "[clip, client_dp, secagg]"
        )
    elif i_sa != len(transforms) - 1:
        problems.append(
            f"transforms: secagg must be the last transform (last on the client, first on "
            f"the server: the sum is unmasked before any server half such as client_dp "
            f"noise runs); move transforms[{i_sa}] (secagg) to the end, e.g. "
            "[clip, client_dp, secagg]"
        )
    if strategy is not None and strategy.needs is not Needs.SUM:
        problems.append(
            f"strategy {type(strategy).__name__} needs {strategy.needs.value} "
            f"({strategy.why_individual}), which secure aggregation hides from the server; "
            "use strategy fedavg (or fedavgm, fedadam, ...), or remove secagg"
        )
    if backend == "split":
        problems.append(
            "backend split trains clients jointly with the server over activations (split "
            "learning): the server sees them by design and there is no update to mask; "
            "remove secagg, or use backend inprocess or process_pool"
        )
    if centralized:
        problems.append(
            "federation.centralized=true pools all data in one client: there is no sum of "
            "clients to protect; remove secagg, or set federation.centralized=false"
        )
    problems.extend(_range_problems(secagg, [t for t in transforms if isinstance(t, NormClip)]))
    if not problems and strategy is not None:
        sampler = strategy.sampler
        expected = max(2, round(sampler.expected_clients(num_clients)))
        largest = max(expected, sampler.largest_cohort(num_clients))
        for cohort, what in ((expected, "the planned"), (largest, "up to")):
            try:
                secagg.round_config().plan(cohort)
            except SecAggConfigError as exc:
                problems.append(f"secagg, for {what} {cohort} clients per round: {exc}")
                return problems
        if any(isinstance(t, ClientLevelDP) for t in transforms):
            problems.extend(_cohort_problems_under_dp(secagg, largest))
            if problems:
                return problems
        problems.extend(_rounding_problems(secagg, transforms, dimension, largest))
    return problems


def _cohort_problems_under_dp(secagg: SecureAggregation, largest: int) -> list[str]:
    """Under client-level DP, the first cohort of 2 to ``largest`` clients that secure
    aggregation cannot run over, as a problem with its fix; [] if every one resolves.

    A Poisson cohort (and clients failing) can leave any number of usable updates. One
    is released by the client itself and none is noise alone; from 2 up, the secure sum
    must run, because a failed round keeps the model unchanged where a neighbouring
    cohort releases a noised sum: the output would then depend on one client's taking
    part by more than its clipped update.
    """
    config = secagg.round_config()
    with warnings.catch_warnings():
        # The sub-majority warning was given, once, for the planned cohort.
        warnings.simplefilter("ignore", SecAggSecurityWarning)
        for n in range(2, largest + 1):
            try:
                config.plan(n)
            except SecAggConfigError as exc:
                return [
                    f"secagg under client-level DP cannot run a round of {n} usable "
                    f"clients, which Poisson sampling or failing clients can leave: {exc}. "
                    "That round would fail instead of releasing its noised sum, and whether "
                    "it fails depends on who took part, which the accountant does not "
                    "cover; set secagg threshold to a fraction above 0.5 (e.g. 0.67), "
                    "which resolves for every cohort of 2 or more"
                ]
    return []


def _rounding_problems(
    secagg: SecureAggregation,
    transforms: Sequence[UpdateTransform | None],
    dimension: int,
    largest: int,
) -> list[str]:
    """Bind client_dp to the rounding excess; reject an excess DP should not absorb."""
    dp = next((t for t in transforms if isinstance(t, ClientLevelDP)), None)
    clip = next((t for t in transforms if isinstance(t, NormClip)), None)
    if dp is None or clip is None:
        return []
    # The excess follows the clip bound when secagg's range does (adaptive too).
    dp.bind_rounding_excess(lambda: secagg.rounding_bound(dimension, largest))
    excess = secagg.rounding_bound(dimension, largest) / clip.max_norm
    if excess <= MAX_ROUNDING_EXCESS:
        return []
    config = secagg.round_config()
    need = config.modulus_bits + max(1, math.ceil(math.log2(excess / MAX_ROUNDING_EXCESS)))
    return [
        f"secagg fixed-point rounding can push a clipped update of {dimension} coordinates "
        f"past clip max_norm by up to {100 * excess:.2g}% with {largest} clients "
        f"(sqrt(d) quanta of clip/levels), which client_dp's noise would have to cover; "
        f"raise secagg modulus_bits to >= {min(need, 64)}"
        + (" (or lower value_bits' cap by leaving it unset)" if config.value_bits else "")
    ]


def _range_problems(secagg: SecureAggregation, clips: Sequence[NormClip]) -> list[str]:
    clip = clips[0] if clips else None
    if clip is None:
        if secagg.auto_clip:
            return [
                "secagg has no range for its fixed-point encoding: add "
                "{name: clip, params: {max_norm: 1.0}} before secagg (the range then "
                "follows max_norm), or set secagg's clip (larger coordinates are clipped)"
            ]
        return []
    if secagg.auto_clip:
        secagg.bind_clip(clip)
        log.info(
            "secagg: fixed-point range follows clip max_norm (now %g)%s",
            clip.max_norm,
            ", at least 1 for the unclipped bit" if clip.adaptive else "",
        )
        return []
    c = secagg.config.clip
    if clip.adaptive:
        return [
            f"secagg clip={c:g} is fixed, but adaptive clipping moves its bound (and sends "
            "a 0/1 bit) each round, so coordinates could exceed it and be clipped; leave "
            "secagg's clip unset to follow the clip bound"
        ]
    if c < clip.max_norm:
        return [
            f"secagg clip={c:g} is below clip max_norm={clip.max_norm:g}: a clipped update "
            "can have a coordinate up to max_norm, which the fixed-point encoding would clip "
            f"again; set secagg clip >= {clip.max_norm:g}, or leave it unset to follow "
            "max_norm"
        ]
    return []
