"""The reversible encoding of mixed columns, fitted federatedly: no raw row leaves a client.

Tabular synthesizers (CTGAN and TVAE, Xu et al. NeurIPS 2019) see a table through
a reversible encoding: a categorical column becomes a one-hot vector; a continuous
(or integer) column becomes *mode-specific normalization*: a variational Gaussian
mixture is fitted to the column, each value is represented by the one-hot of a
mixture mode (drawn from its posterior) and its offset ``(x - mu_k) / (4 sigma_k)``
within that mode.

Fitted centrally, that encoding needs the pooled rows. Here it is fitted as
Fed-TGAN (Zhao et al. 2021) does, from statistics each client computes on its
own rows (``client_statistics``) and the server merges (``merge_statistics``):

- categorical columns: the count of every category. Merged by summing, so the
  merged categories and frequencies are exactly the pooled ones.
- continuous and integer columns: count, sum, sum of squares, min and max (merged
  exactly: pooled mean, variance and range), the sums of products of every pair of
  numeric columns (merged exactly: pooled Pearson correlations, which the report
  shows beside the synthetic ones), and the client's own variational
  Gaussian mixture (weights, means, standard deviations, at most ``max_modes``).
  The server draws points from the count-weighted union of the clients' mixtures
  (a density equal to the pooled mixture's) and fits the global mixture to them.
- pairs of categorical columns: their joint counts (contingency tables), merged by
  summing: a conditional synthesizer draws two columns jointly from them.

What the server learns is therefore each client's category counts and joint counts,
moments, cross-products, range and mixture parameters: aggregate statistics, not rows,
but not protected by differential privacy either (a client's min/max is one of its
values). Under DP the release is refused, not accounted for (``fedgen.data.table_data``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedgen.data.table_schema import ColumnType, SchemaError, TableSchema

#: Modes whose merged weight is below this are dropped (CTGAN's threshold).
MODE_WEIGHT_THRESHOLD = 0.005
#: Points the server draws from the union of client mixtures to fit the global one.
MERGE_POINTS = 5_000
#: The smallest standard deviation a mode may have (a column constant on a client).
MIN_STD = 1e-3
#: scikit-learn's covariance form for the 1-D mixtures. For one feature "diag" is the
#: same model as the default "full" (the modes agree to 4e-10, the same iterations)
#: without a Cholesky factor per mode and iteration: 1.4-1.9x faster
#: (benchmarks/table_encoder.py, results/table_encoder.md).
MIXTURE_COVARIANCE = "diag"


def _fit_mixture(values: np.ndarray, max_modes: int, seed: int) -> dict[str, list[float]]:
    """A variational Gaussian mixture of 1-D ``values`` (CTGAN's settings), active modes only."""
    unique = np.unique(values)
    if len(unique) == 1:
        return {"weights": [1.0], "means": [float(unique[0])], "stds": [MIN_STD]}
    modes = int(min(max_modes, len(unique), len(values)))
    # Imported here: scikit-learn (with scipy) costs every fedgen process about a second
    # to import, and only a table's encoder fit uses it.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    bgm = BayesianGaussianMixture(
        n_components=modes,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=0.001,
        max_iter=100,
        random_state=seed,
        covariance_type=MIXTURE_COVARIANCE,
    )
    with warnings.catch_warnings():
        # Columns of few distinct values rarely converge to tolerance; the fit is still usable.
        warnings.simplefilter("ignore", ConvergenceWarning)
        bgm.fit(values.reshape(-1, 1))
    keep = bgm.weights_ > MODE_WEIGHT_THRESHOLD
    weights = bgm.weights_[keep] / bgm.weights_[keep].sum()
    return {
        "weights": [float(w) for w in weights],
        "means": [float(m) for m in bgm.means_.ravel()[keep]],
        "stds": [max(float(s), MIN_STD) for s in np.sqrt(bgm.covariances_.ravel()[keep])],
    }


def client_statistics(
    frame: pd.DataFrame, schema: TableSchema, max_modes: int, seed: int
) -> dict[str, Any]:
    """What one client sends to fit the encoder: per column, JSON-ready (see module doc)."""
    if len(frame) == 0:
        raise SchemaError("a client with no rows cannot contribute to the table encoder")
    stats: dict[str, Any] = {"rows": len(frame), "columns": {}}
    for column in schema.columns:
        values = frame[column.name]
        if column.type == ColumnType.CATEGORICAL:
            counts = values.astype(str).value_counts()
            stats["columns"][column.name] = {"counts": {str(k): int(v) for k, v in counts.items()}}
            continue
        x = values.to_numpy(dtype=np.float64)
        stats["columns"][column.name] = {
            "count": len(x),
            "sum": float(x.sum()),
            "sum_sq": float((x * x).sum()),
            "min": float(x.min()),
            "max": float(x.max()),
            "mixture": _fit_mixture(x, max_modes, seed),
        }
    # Joint counts of every pair of categorical columns: merged by summing, the pooled
    # contingency tables exactly (a conditional model draws two columns jointly from them).
    categorical = [c.name for c in schema.columns if c.type == ColumnType.CATEGORICAL]
    codes = {name: pd.factorize(frame[name].astype(str), sort=True) for name in categorical}
    stats["pairs"] = {
        f"{a}|{b}": _joint_counts(*codes[a], *codes[b])
        for i, a in enumerate(categorical)
        for b in categorical[i + 1 :]
    }
    # Sums of products of every pair of numeric columns: with the sums and sums of squares
    # above they give the pooled Pearson correlations exactly (the report's real matrix).
    numeric = [c.name for c in schema.columns if c.numeric]
    stats["cross"] = {
        f"{a}|{b}": float(
            (frame[a].to_numpy(dtype=np.float64) * frame[b].to_numpy(dtype=np.float64)).sum()
        )
        for i, a in enumerate(numeric)
        for b in numeric[i + 1 :]
    }
    return stats


def _joint_counts(
    codes_a: np.ndarray, values_a: pd.Index, codes_b: np.ndarray, values_b: pd.Index
) -> dict[str, dict[str, int]]:
    """The contingency table of two factorized columns as nested dicts of its non-zero
    counts, values in sorted order: ``pd.crosstab``'s, 7-46x faster on the packaged
    tables (a pair per two categorical columns, so hundreds on a wide table)."""
    # A missing value is code -1 where astype(str) keeps it missing (pandas 3's strings);
    # crosstab leaves such rows out, and so does this.
    both = (codes_a >= 0) & (codes_b >= 0)
    table = np.bincount(
        codes_a[both] * len(values_b) + codes_b[both], minlength=len(values_a) * len(values_b)
    ).reshape(len(values_a), len(values_b))
    return {
        str(va): {str(values_b[j]): int(row[j]) for j in np.flatnonzero(row)}
        for va, row in zip(values_a, table, strict=True)
    }


def statistics_nbytes(stats: dict[str, Any]) -> int:
    """Bytes of one client's statistics as canonical JSON (what crosses the wire)."""
    return len(json.dumps(stats, sort_keys=True, separators=(",", ":")).encode())


@dataclass(frozen=True)
class ContinuousEncoding:
    """Mode-specific normalization of one numeric column (the global mixture's active modes)."""

    name: str
    integer: bool
    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    minimum: float
    maximum: float
    mean: float
    std: float

    @property
    def width(self) -> int:
        return 1 + len(self.means)

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """``(N, modes)`` probabilities of each mode given each value."""
        z = (x[:, None] - self.means[None, :]) / self.stds[None, :]
        log_p = np.log(self.weights)[None, :] - np.log(self.stds)[None, :] - 0.5 * z * z
        log_p -= log_p.max(axis=1, keepdims=True)
        p = np.exp(log_p)
        return np.asarray(p / p.sum(axis=1, keepdims=True))

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(N, 1 + modes)``: the offset in the drawn mode, then the mode's one-hot."""
        probs = self.posterior(x)
        # A mode per value drawn from its posterior (CTGAN), by inverse CDF.
        u = rng.random(len(x))[:, None]
        mode = np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), len(self.means) - 1)
        alpha = (x - self.means[mode]) / (4 * self.stds[mode])
        out = np.zeros((len(x), self.width), dtype=np.float32)
        out[:, 0] = np.clip(alpha, -0.99, 0.99)
        out[np.arange(len(x)), 1 + mode] = 1.0
        return out

    def decode(self, block: np.ndarray) -> np.ndarray:
        """Values of ``(N, 1 + modes)`` blocks: the argmax mode, offset in [-1, 1], clipped
        to the merged range (and rounded for integer columns)."""
        mode = block[:, 1:].argmax(axis=1)
        alpha = np.clip(block[:, 0], -1.0, 1.0)
        x = np.clip(alpha * 4 * self.stds[mode] + self.means[mode], self.minimum, self.maximum)
        return np.round(x) if self.integer else x


@dataclass(frozen=True)
class CategoricalEncoding:
    """One-hot of one categorical column over the categories seen in the training rows."""

    name: str
    categories: tuple[str, ...]
    counts: np.ndarray

    @property
    def width(self) -> int:
        return len(self.categories)

    def index(self, value: Any) -> int:
        """The one-hot position of ``value``; ``ValueError`` when no training row holds it."""
        try:
            return self.categories.index(str(value))
        except ValueError:
            raise ValueError(
                f"column {self.name!r} has no category {str(value)!r} in the training rows; "
                f"condition on one of {list(self.categories)}"
            ) from None

    def encode(self, values: pd.Series) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(self.categories)}
        codes = values.astype(str).map(lookup)
        if codes.isna().any():
            unknown = sorted(set(values.astype(str)) - set(self.categories))
            raise SchemaError(
                f"column {self.name!r} holds categories {unknown[:5]} the encoder was not "
                "fitted on; refit the encoder with every client's statistics"
            )
        out = np.zeros((len(values), self.width), dtype=np.float32)
        out[np.arange(len(values)), codes.to_numpy(dtype=np.int64)] = 1.0
        return out

    def decode(self, block: np.ndarray) -> np.ndarray:
        return np.asarray(self.categories, dtype=object)[block.argmax(axis=1)]


Encoding = ContinuousEncoding | CategoricalEncoding


@dataclass(frozen=True)
class Span:
    """Where a column's block sits in an encoded row, and how a network should output it."""

    column: str
    start: int
    width: int
    #: ``tanh`` (the offset of a numeric column) or ``softmax`` (a one-hot).
    activation: str


@dataclass(frozen=True)
class TableEncoder:
    """The merged encoding of a table: encode rows to ``(N, dim)`` float32 and back."""

    schema: TableSchema
    encodings: tuple[Encoding, ...]
    #: Bytes each client sent to fit it (canonical JSON of its statistics).
    client_bytes: tuple[int, ...] = field(default=())
    #: Pooled Pearson correlations of the numeric columns (in schema order), merged exactly.
    correlation: np.ndarray | None = None
    #: Pooled joint counts of each pair of categorical columns ``"a|b"`` (a before b in
    #: schema order): ``(len(a's categories), len(b's))``, in the encodings' category order.
    pairs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return sum(e.width for e in self.encodings)

    def spans(self) -> list[Span]:
        """Every output block in order: a numeric column gives a tanh offset then a
        softmax over modes, a categorical column one softmax."""
        out, start = [], 0
        for e in self.encodings:
            if isinstance(e, ContinuousEncoding):
                out.append(Span(e.name, start, 1, "tanh"))
                out.append(Span(e.name, start + 1, e.width - 1, "softmax"))
            else:
                out.append(Span(e.name, start, e.width, "softmax"))
            start += e.width
        return out

    def categorical(self) -> list[tuple[CategoricalEncoding, int]]:
        """Each categorical column's encoding and its block's start in an encoded row."""
        out, start = [], 0
        for e in self.encodings:
            if isinstance(e, CategoricalEncoding):
                out.append((e, start))
            start += e.width
        return out

    def joint_counts(self, a: str, b: str) -> np.ndarray | None:
        """The pooled counts of categorical columns ``a`` x ``b``; None when the clients
        sent none (an encoder fitted before joint counts were part of the statistics)."""
        if f"{a}|{b}" in self.pairs:
            return self.pairs[f"{a}|{b}"]
        other = self.pairs.get(f"{b}|{a}")
        return None if other is None else other.T

    def encoding(self, column: str) -> Encoding:
        for e in self.encodings:
            if e.name == column:
                return e
        raise ValueError(f"no column {column!r}; the table's columns are {self.schema.names}")

    def encode(self, frame: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
        """``(N, dim)`` float32 rows of a frame checked against the schema."""
        frame = self.schema.check(frame, "the rows to encode")
        blocks = [
            e.encode(frame[e.name].to_numpy(dtype=np.float64), rng)
            if isinstance(e, ContinuousEncoding)
            else e.encode(frame[e.name])
            for e in self.encodings
        ]
        return np.concatenate(blocks, axis=1)

    def decode(self, rows: np.ndarray) -> pd.DataFrame:
        """The table of ``(N, dim)`` encoded rows (network outputs need not be exact one-hots)."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected encoded rows of shape (N, {self.dim}), got {rows.shape}")
        out, start = {}, 0
        for e in self.encodings:
            out[e.name] = e.decode(rows[:, start : start + e.width])
            start += e.width
        return pd.DataFrame(out)[self.schema.names]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description: per column its modes or categories."""
        columns: dict[str, Any] = {}
        for e in self.encodings:
            if isinstance(e, ContinuousEncoding):
                columns[e.name] = {
                    "modes": len(e.means),
                    "mean": e.mean,
                    "std": e.std,
                    "min": e.minimum,
                    "max": e.maximum,
                }
            else:
                columns[e.name] = {
                    "categories": dict(zip(e.categories, e.counts.tolist(), strict=True))
                }
        return {"dim": self.dim, "client_bytes": list(self.client_bytes), "columns": columns}


def encoder_state(encoder: TableEncoder) -> dict[str, Any]:
    """Everything of ``encoder`` as JSON values (floats round-trip exactly): what the
    server sends its clients once it has merged their statistics."""
    encodings: list[dict[str, Any]] = []
    for e in encoder.encodings:
        if isinstance(e, ContinuousEncoding):
            encodings.append(
                {
                    "name": e.name,
                    "integer": e.integer,
                    "weights": e.weights.tolist(),
                    "means": e.means.tolist(),
                    "stds": e.stds.tolist(),
                    "minimum": e.minimum,
                    "maximum": e.maximum,
                    "mean": e.mean,
                    "std": e.std,
                }
            )
        else:
            encodings.append(
                {"name": e.name, "categories": list(e.categories), "counts": e.counts.tolist()}
            )
    return {
        "encodings": encodings,
        "client_bytes": list(encoder.client_bytes),
        "correlation": None if encoder.correlation is None else encoder.correlation.tolist(),
        "pairs": {k: v.tolist() for k, v in encoder.pairs.items()},
    }


def encoder_from_state(state: dict[str, Any], schema: TableSchema) -> TableEncoder:
    """The encoder ``encoder_state`` described, over ``schema`` (its columns in order);
    ``SchemaError`` when the columns differ."""
    names = [e["name"] for e in state["encodings"]]
    if names != schema.names:
        raise SchemaError(f"the encoder's columns {names} are not the table's {schema.names}")
    encodings: list[Encoding] = []
    for e in state["encodings"]:
        if "categories" in e:
            encodings.append(
                CategoricalEncoding(e["name"], tuple(e["categories"]), np.asarray(e["counts"]))
            )
        else:
            encodings.append(
                ContinuousEncoding(
                    e["name"],
                    bool(e["integer"]),
                    np.asarray(e["weights"], dtype=np.float64),
                    np.asarray(e["means"], dtype=np.float64),
                    np.asarray(e["stds"], dtype=np.float64),
                    float(e["minimum"]),
                    float(e["maximum"]),
                    float(e["mean"]),
                    float(e["std"]),
                )
            )
    corr = state["correlation"]
    return TableEncoder(
        schema,
        tuple(encodings),
        tuple(int(b) for b in state["client_bytes"]),
        None if corr is None else np.asarray(corr, dtype=np.float64),
        # Encoders saved before joint counts were sent have none.
        {k: np.asarray(v, dtype=np.int64) for k, v in state.get("pairs", {}).items()},
    )


def merge_statistics(
    stats: Sequence[dict[str, Any]], schema: TableSchema, max_modes: int, seed: int
) -> TableEncoder:
    """The server's half: the global encoder from every client's ``client_statistics``."""
    if not stats:
        raise SchemaError("the table encoder needs the statistics of at least one client")
    rng = np.random.default_rng(seed)
    encodings: list[Encoding] = []
    for column in schema.columns:
        parts = [s["columns"][column.name] for s in stats]
        if column.type == ColumnType.CATEGORICAL:
            counts: dict[str, int] = {}
            for p in parts:
                for k, v in p["counts"].items():
                    counts[k] = counts.get(k, 0) + v
            categories = tuple(sorted(counts))
            encodings.append(
                CategoricalEncoding(
                    column.name, categories, np.array([counts[c] for c in categories])
                )
            )
            continue
        n = sum(p["count"] for p in parts)
        mean = sum(p["sum"] for p in parts) / n
        var = max(sum(p["sum_sq"] for p in parts) / n - mean * mean, 0.0)
        encodings.append(
            _merge_mixtures(
                column.name,
                column.type == ColumnType.INTEGER,
                parts,
                max_modes,
                rng,
                minimum=min(p["min"] for p in parts),
                maximum=max(p["max"] for p in parts),
                mean=mean,
                std=math.sqrt(var),
            )
        )
    return TableEncoder(
        schema,
        tuple(encodings),
        tuple(statistics_nbytes(s) for s in stats),
        _merge_correlation(stats, encodings),
        _merge_pairs(stats, encodings),
    )


def _merge_pairs(
    stats: Sequence[dict[str, Any]], encodings: list[Encoding]
) -> dict[str, np.ndarray]:
    """Pooled joint counts of each pair of categorical columns, summed over clients."""
    if any("pairs" not in s for s in stats):
        return {}
    categorical = [e for e in encodings if isinstance(e, CategoricalEncoding)]
    out: dict[str, np.ndarray] = {}
    for i, a in enumerate(categorical):
        for b in categorical[i + 1 :]:
            key = f"{a.name}|{b.name}"
            table = np.zeros((a.width, b.width), dtype=np.int64)
            row = {c: k for k, c in enumerate(a.categories)}
            col = {c: k for k, c in enumerate(b.categories)}
            for s in stats:
                try:
                    for va, counts in s["pairs"][key].items():
                        for vb, n in counts.items():
                            table[row[va], col[vb]] += int(n)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise SchemaError(
                        f"a client's joint counts of {key} are malformed or name a category "
                        f"no client counted ({exc!r}); its statistics must come from "
                        "client_statistics on its own rows"
                    ) from exc
            out[key] = table
    return out


def _merge_correlation(
    stats: Sequence[dict[str, Any]], encodings: list[Encoding]
) -> np.ndarray | None:
    """Pooled Pearson correlations of the numeric columns from the clients' sums."""
    numeric = [e for e in encodings if isinstance(e, ContinuousEncoding)]
    if not numeric or any("cross" not in s for s in stats):
        return None
    n = sum(s["columns"][numeric[0].name]["count"] for s in stats)
    corr = np.eye(len(numeric))
    for i, a in enumerate(numeric):
        for j in range(i + 1, len(numeric)):
            b = numeric[j]
            sxy = sum(s["cross"][f"{a.name}|{b.name}"] for s in stats) / n
            denom = a.std * b.std
            corr[i, j] = corr[j, i] = (sxy - a.mean * b.mean) / denom if denom > 0 else 0.0
    return corr


def _merge_mixtures(
    name: str,
    integer: bool,
    parts: list[dict[str, Any]],
    max_modes: int,
    rng: np.random.Generator,
    **moments: float,
) -> ContinuousEncoding:
    """The global mixture of a numeric column, fitted to points drawn from the union of the
    clients' mixtures, each weighted by its client's row count."""
    weights = np.concatenate(
        [np.asarray(p["mixture"]["weights"]) * p["count"] for p in parts]
    ).astype(np.float64)
    means = np.concatenate([p["mixture"]["means"] for p in parts])
    stds = np.concatenate([p["mixture"]["stds"] for p in parts])
    weights /= weights.sum()
    component = rng.choice(len(weights), size=MERGE_POINTS, p=weights)
    points = rng.normal(means[component], stds[component])
    points = np.clip(points, moments["minimum"], moments["maximum"])
    fit = _fit_mixture(points, max_modes, int(rng.integers(2**31)))
    return ContinuousEncoding(
        name,
        integer,
        np.asarray(fit["weights"]),
        np.asarray(fit["means"]),
        np.asarray(fit["stds"]),
        **moments,
    )


def _fit_input_digest(frame: pd.DataFrame, schema: TableSchema) -> str:
    """A digest of what ``client_statistics`` reads of ``frame``: each categorical column
    as strings (None, NaN and NA are three categories there, one hash to pandas) and each
    numeric column as float64."""
    digest = hashlib.sha256()
    for column in schema.columns:
        values = frame[column.name]
        if column.type == ColumnType.CATEGORICAL:
            hashed = pd.util.hash_pandas_object(values.astype(str), index=False).to_numpy()
            digest.update(b"c" + hashed.tobytes())
        else:
            digest.update(b"n" + values.to_numpy(dtype=np.float64).tobytes())
    return digest.hexdigest()


#: Encoders fitted in this process, by the clients' rows and the fit's settings: a fit
#: takes seconds to minutes (a mixture per numeric column per client, then per column),
#: and a downstream run's arms, a benchmark's variants and the tests build the same
#: federated table again.
_FITTED: dict[tuple[Any, ...], TableEncoder] = {}
_FITTED_KEEP = 8


def fit_encoder_federated(
    frames: Sequence[pd.DataFrame], schema: TableSchema, max_modes: int, seed: int
) -> TableEncoder:
    """Each client computes its statistics on its own rows; the server merges them."""
    key = (tuple(_fit_input_digest(f, schema) for f in frames), schema, max_modes, seed)
    if key not in _FITTED:
        stats = [client_statistics(f, schema, max_modes, seed + i) for i, f in enumerate(frames)]
        if len(_FITTED) >= _FITTED_KEEP:
            del _FITTED[next(iter(_FITTED))]
        _FITTED[key] = merge_statistics(stats, schema, max_modes, seed)
    # A copy: an encoder holds numpy arrays, and no caller may change another's.
    return copy.deepcopy(_FITTED[key])
