"""Secure aggregation as a stage of the round, over the same messages as training.

After training, each client of the round holds its update (``LocalWork.secure``)
and has replied with its example count only. The stage then runs the server's
side of SecAgg/SecAgg+ (``fedgen.transforms.secagg.run_secure_sum``) through the
backend's ``exchange``: every request and reply is an encoded ``fedgen.wire``
message (``transforms/secagg/codec.py``), so the same stage runs in one process,
over a process pool or across Flower SuperNodes, and its byte counts are the
encoded lengths. The strategy receives the unmasked sum (``aggregate_sum``); the
server never holds an individual update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedgen.engine.audit import RoundAudit
from fedgen.engine.backends.secagg_client import (
    compact_reference,
    lone_noise,
    vector_layout,
)
from fedgen.ledger import state_digest
from fedgen.seeding import derive_seed
from fedgen.strategies.base import Aggregate, Strategy
from fedgen.transforms.base import UpdateTransform
from fedgen.transforms.codec import decode_arrival
from fedgen.transforms.secagg import (
    SecAggConfigError,
    SecAggRoundFailedError,
    SecureAggregation,
)
from fedgen.transforms.secagg.channel import PHASES
from fedgen.transforms.secagg.codec import from_message, to_message
from fedgen.transforms.secagg.link import DOWNLOAD_PHASE
from fedgen.transforms.secagg.protocol import run_secure_sum
from fedgen.transforms.secagg.requests import LoneRelease, LoneRequest
from fedgen.types import ClientResult, StateDict
from fedgen.wire import WireError, decode, encode

if TYPE_CHECKING:
    from fedgen.privacy.budget import PrivacyAccounting

log = logging.getLogger(__name__)

#: The lone release's messages count under this phase (``LoneRequest``).
LONE_PHASE = "lone_release"

#: Sends one encoded request per client and returns each encoded reply (None: none came).
Exchange = Callable[[dict[int, bytes]], dict[int, bytes | None]]


class WireLink:
    """A ``ClientLink`` whose messages are encoded and carried by ``exchange``.

    A reply that does not decode, or that says the client refuses (``error``), counts
    as no reply: the client dropped, and the protocol's thresholds decide the round.
    """

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self.bytes_up: dict[str, int] = dict.fromkeys(PHASES, 0)
        self.bytes_down: dict[str, int] = dict.fromkeys(PHASES, 0)
        # The clients' compute is theirs: the server does not see it.
        self.client_seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        #: Clients that refused or answered garbage, and why (for the log).
        self.refused: dict[int, str] = {}

    def ask(self, phase: str, requests: Mapping[int, object]) -> dict[int, object]:
        encoded = {cid: encode(to_message(r)) for cid, r in requests.items()}
        down = DOWNLOAD_PHASE.get(phase, phase)
        self.bytes_down[down] = self.bytes_down.get(down, 0) + sum(len(b) for b in encoded.values())
        replies: dict[int, object] = {}
        for cid, data in self._exchange(encoded).items():
            if data is None or cid not in encoded:
                continue
            self.bytes_up[phase] = self.bytes_up.get(phase, 0) + len(data)
            try:
                message = decode(data)
                if "error" in message.meta:
                    raise WireError(str(message.meta["error"])[:200])
                replies[cid] = from_message(message)
            except WireError as exc:
                self.refused[cid] = f"{phase}: {exc}"
                log.warning(
                    "client %d dropped out of secure aggregation in %s", cid, self.refused[cid]
                )
        return replies

    def clipped(self, client_ids: tuple[int, ...]) -> int | None:
        return None  # only each client knows what its encoding clipped


class SecureAggregationStage:
    """Turns a round's held updates into the strategy's aggregate by secure aggregation."""

    def __init__(
        self, secagg: SecureAggregation, transforms: Sequence[UpdateTransform] = ()
    ) -> None:
        self.secagg = secagg
        #: The pipeline: with a shared-support codec, clients mask its compact encoding
        #: (``compact_reference``) and the stage decodes the sum.
        self.transforms = list(transforms)

    def aggregate(
        self,
        r: int,
        *,
        seed: int,
        strategy: Strategy,
        global_state: StateDict,
        auxiliary: frozenset[str],
        results: Iterable[ClientResult],
        exchange: Exchange,
        metrics: dict[str, Any],
        privacy: PrivacyAccounting | None,
        audit: RoundAudit | None,
    ) -> tuple[Aggregate, WireLink | None]:
        """The round's aggregate from a secure sum of the accepted, held updates.

        ``auxiliary`` names the transforms' side-channel tensors each update carries.
        Also returns the link the stage talked over (None when it sent nothing), for
        its byte counts. Raises ``SecAggRoundFailedError`` (a ``RoundFailedError``)
        when fewer than two clients remain or too few survive to unmask.
        """
        weights: dict[int, float] = {}
        examples: dict[int, int] = {}
        for res in results:
            weights[res.client_id] = strategy.client_weight(res.num_examples)
            examples[res.client_id] = res.num_examples
        config = self.secagg.round_config()
        # Public (it follows the clip bound), and set in every round whatever its cohort,
        # so that its presence does not tell rounds of fewer than two clients apart.
        metrics["secagg/clip_range"] = config.clip
        if not weights:
            # The sum of no client is zero: nothing to mask (fixed denominator: noise only).
            return strategy.aggregate_sum(r, {}, 0.0, 0, 0), None
        if len(weights) < 2:
            if privacy is not None and privacy.unit == "client":
                # Client-level DP: the lone client adds the round's noise itself, so
                # the round releases what a secure round would, with the accounted
                # noise, and the server sees only that. (A failed round, or one
                # releasing noise alone, would make the round's output depend on
                # whether this client took part by more than its clipped update.)
                ((cid, weight),) = weights.items()
                lone = self._release_alone(
                    r,
                    cid,
                    weight,
                    examples[cid],
                    strategy,
                    global_state,
                    auxiliary,
                    exchange,
                    config.clip,
                )
                if lone is not None:
                    aggregate, link, noised_sum = lone
                    if audit is not None:
                        # The server held the noised update only: it logs that sum.
                        audit.sum_digest = state_digest(noised_sum)
                        audit.aggregated = [cid]
                    return aggregate, link
            elif privacy is not None:
                # Sample-level DP: the server adds no noise, and the update alone
                # cannot be hidden; it is left out, as a failed client's is (whether
                # a client took part is not what sample-level DP protects).
                log.warning(
                    "round %d: one usable client under secure aggregation; "
                    "releasing a round of no client",
                    r,
                )
            else:
                raise SecAggRoundFailedError(
                    f"round {r}: only {len(examples)} usable client update, and secure "
                    "aggregation of one client would reveal it; sample more clients per round"
                )
            return strategy.aggregate_sum(r, {}, 0.0, 0, 0), None
        drops = self.secagg.dropouts(weights, seed, r)
        metrics["secagg/dropped"] = float(len(drops))
        compact = compact_reference(self.transforms, global_state, r)
        names, shapes = vector_layout(global_state if compact is None else compact, auxiliary)
        link = WireLink(exchange)
        try:
            secure = run_secure_sum(
                weights,
                config=config,
                seed=derive_seed(seed, "secagg"),
                round=r,
                names=names,
                shapes=shapes,
                link=link,
                drop_after_sharing=drops,
            )
        except SecAggConfigError as exc:
            # A cohort the recipe's plan could not foresee (e.g. clients failed). Under
            # client-level DP the build checked every cohort size, so this cannot happen.
            raise SecAggRoundFailedError(
                f"round {r}: secure aggregation cannot run over {len(weights)} clients: {exc}"
            ) from exc
        except SecAggRoundFailedError:
            if privacy is not None and privacy.unit == "client":
                # Too few survived to unmask: the round releases nothing and is not
                # charged, but that it failed can depend on who took part, which the
                # Gaussian mechanism's analysis does not cover. Rare with a large cohort
                # and a fractional threshold; said once per failed round.
                log.warning(
                    "round %d: secure aggregation failed under client-level DP; the "
                    "failure itself is outside the accountant's guarantee (keep dropouts "
                    "rare: sample more clients per round or lower secagg threshold)",
                    r,
                )
            raise
        metrics.update({f"secagg/{k}": v for k, v in secure.metrics().items()})
        if audit is not None:
            # The server never held an individual update: it logs the unmasked sum.
            audit.sum_digest = state_digest(secure.weighted_sum)
            audit.aggregated = sorted(secure.survivors)
        # Example counts are public in fedgen (every result reports its own), so the
        # exact weight sum of the survivors is used; the fixed-point error stays in the
        # numerator, where ``max_abs_error`` bounds it.
        # The sum of the clients' compact encodings is the encoding of their sum (the
        # codec is linear over the round's shared support): decode it once.
        total = secure.weighted_sum
        if compact is not None:
            # The protocol sums in float64; the codec decodes its own dtypes.
            total = decode_arrival(
                self.transforms, _as_encoded(total, compact), global_state, r, -1
            )
        aggregate = strategy.aggregate_sum(
            r,
            total,
            sum(weights[c] for c in secure.survivors),
            len(secure.survivors),
            sum(examples[c] for c in secure.survivors),
        )
        return aggregate, link

    def _release_alone(
        self,
        r: int,
        cid: int,
        weight: float,
        num_examples: int,
        strategy: Strategy,
        global_state: StateDict,
        auxiliary: frozenset[str],
        exchange: Exchange,
        clip: float,
    ) -> tuple[Aggregate, WireLink, StateDict] | None:
        """The only client's update with the round's noise, added by the client itself
        (the aggregate, the link, and the noised sum as it arrived); None when the client
        sent nothing usable (it counts as a failed client).

        A server that sent this request to a client that was not alone would get that
        client's update with the round's noise: local DP at the accounted multiplier, for
        that round, instead of secure aggregation's guarantee. The client refuses any
        noise but its own recipe's, and any second release.
        """
        if weight != 1.0:
            # The noise is in units of a weight-1 sum (client-level DP's unweighted mean).
            raise SecAggConfigError(
                f"round {r}: a lone client's release needs the unweighted, fixed-denominator "
                f"mean client-level DP uses (weight 1, not {weight}); set strategy.params "
                "weighted: false and fixed_denominator: true"
            )
        # What the client holds: its update, or its compact encoding under a codec
        # whose support every client shares (values placed as they are: random_mask
        # without rescale, the only such codec client_dp allows).
        compact = compact_reference(self.transforms, global_state, r)
        reference = global_state if compact is None else compact
        names, shapes = vector_layout(reference, auxiliary)
        segments, stds = lone_noise(self.transforms, global_state, reference, auxiliary)
        link = WireLink(exchange)
        reply = link.ask(LONE_PHASE, {cid: LoneRequest(r, segments, stds)}).get(cid)
        values = getattr(reply, "values", None)
        problem = None
        if not isinstance(reply, LoneRelease) or reply.client_id != cid or reply.round != r:
            problem = link.refused.get(cid, "no release came")
        elif not isinstance(values, np.ndarray) or values.shape != (sum(segments),):
            problem = f"a release of {getattr(values, 'shape', type(values))} values"
        else:
            # An honest release is within the clip range plus its noise (10 standard
            # deviations: 1e-23 per coordinate); anything past it is refused, as
            # secure aggregation's fixed-point range refuses it.
            bound = clip + 10 * np.repeat(np.asarray(stds), segments)
            if not bool(np.all(np.abs(values) <= bound)):  # NaN fails too
                problem = "a release outside the clip range and its noise"
        if problem is not None:
            # As a failed client: the round releases the noise of no client's update.
            log.warning(
                "round %d: the only client's noised update is unusable (%s); it counts as failed",
                r,
                problem,
            )
            return None
        assert isinstance(values, np.ndarray)
        pieces = torch.split(torch.from_numpy(values), list(segments))
        total = {k: v.reshape(shape) for k, v, shape in zip(names, pieces, shapes, strict=True)}
        arrived = total
        # Where the client drew noise (1), for the server halves to draw none there.
        drawn = {
            k: torch.full(shape, float(std > 0), dtype=torch.float64)
            for k, shape, std in zip(names, shapes, stds, strict=True)
        }
        if compact is not None:
            # Decoded, the coordinates the codec did not send are zero for every client
            # and carry no noise yet: the server halves add it there.
            total = decode_arrival(
                self.transforms, _as_encoded(total, compact), global_state, r, -1
            )
            drawn = decode_arrival(
                self.transforms, _as_encoded(drawn, compact), global_state, r, -1
            )
        aggregate = strategy.aggregate_sum(r, total, weight, 1, num_examples)
        aggregate.noised = {k: v != 0 for k, v in drawn.items()}
        return aggregate, link, arrived


def _as_encoded(values: StateDict, compact: StateDict) -> StateDict:
    """Float64 sums in the dtypes of the codec's encoding, for it to decode."""
    return {k: v.to(compact[k].dtype) if k in compact else v for k, v in values.items()}
