"""Table quality as the field measures it: fidelity, machine-learning efficacy, privacy.

- Fidelity: the ``sdmetrics`` single-table quality report on synthetic rows against
  as many real training rows: *column shapes* (per column, the Kolmogorov-Smirnov
  complement for numeric columns, the total-variation complement for categorical
  ones) and *column pair trends* (per pair, correlation similarity or contingency
  similarity); ``quality_score`` is their mean, as sdmetrics reports it.
- Machine-learning efficacy (final evaluation): train-synthetic-test-real (TSTR).
  A scikit-learn histogram gradient-boosted classifier predicts the table's target
  from the other columns; trained on synthetic rows and on the real training rows
  (TRTR), each is scored by macro F1 on the held-out real rows. ``ml_efficacy_ratio``
  is TSTR / TRTR.
- Privacy (final evaluation): distance to closest record (DCR) against a real
  holdout. Distances are Gower distances (numeric columns scaled by the training
  range, categorical ones 0/1, averaged over columns). ``dcr_synthetic_train`` is the
  median distance of synthetic rows to their closest training row,
  ``dcr_holdout_train`` the same for held-out real rows (what "not memorised" looks
  like), and ``dcr_closer_to_train`` the share of synthetic rows closer to the
  training rows than to as many held-out rows, a tie counting half (0.5 when nothing
  is memorised).

The real rows are the federation's pooled training rows and the server holdout
(``fedgen.data.table_data``): the simulation's evaluation sees them, no client does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedgen.config import EvalConfig
from fedgen.data.table_schema import ColumnType, TableSchema
from fedgen.eval.repeats import mean_over_repeats
from fedgen.registry import EVALUATORS

#: Rows on each side of the DCR comparison and the quality report, at most.
MAX_DISTANCE_ROWS = 2000


def quality_report(real: pd.DataFrame, synthetic: pd.DataFrame, schema: TableSchema) -> dict:
    """sdmetrics' quality report: overall score, column shapes, column pair trends."""
    with warnings.catch_warnings():
        # sdmetrics 0.32 warns that the single-table report moves; its API is unchanged.
        warnings.simplefilter("ignore", FutureWarning)
        from sdmetrics.reports.single_table import QualityReport

    metadata = {
        "columns": {
            c.name: {"sdtype": "numerical" if c.numeric else "categorical"} for c in schema.columns
        }
    }
    report = QualityReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.generate(real, synthetic, metadata, verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    return {
        "quality_score": float(report.get_score()),
        "column_shapes": float(props["Column Shapes"]),
        "column_pair_trends": float(props["Column Pair Trends"]),
    }


def _features(frame: pd.DataFrame, schema: TableSchema, categories: dict[str, list[str]]):
    """Columns except the target typed for the classifier: categories as pandas categoricals."""
    out = {}
    for c in schema.columns:
        if c.type == ColumnType.CATEGORICAL:
            out[c.name] = pd.Categorical(frame[c.name].astype(str), categories=categories[c.name])
        else:
            out[c.name] = frame[c.name].astype(float).to_numpy()
    return pd.DataFrame(out)


def ml_efficacy(
    train: pd.DataFrame,
    test: pd.DataFrame,
    schema: TableSchema,
    target: str,
    seed: int,
) -> float:
    """Macro F1 on ``test`` of a gradient-boosted classifier of ``target`` fitted on ``train``."""
    # scikit-learn is imported where it is used: the registry imports this module in every
    # fedgen process (pool workers, Flower ClientApps), and sklearn took 1.4 s of that.
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import f1_score

    categories = {
        c: sorted(set(train[c].astype(str)) | set(test[c].astype(str)))
        for c in schema.categorical()
    }
    x_train = _features(train, schema, categories).drop(columns=[target])
    x_test = _features(test, schema, categories).drop(columns=[target])
    y_train, y_test = train[target].astype(str), test[target].astype(str)
    if y_train.nunique() < 2:  # a constant target: the classifier would refuse it
        predicted = np.full(len(y_test), y_train.iloc[0])
    else:
        # No early stopping: its stratified validation split fails on a synthetic class of
        # one row, and without it TSTR and TRTR fit the same way whatever the row count.
        model = HistGradientBoostingClassifier(
            categorical_features="from_dtype", early_stopping=False, random_state=seed
        )
        model.fit(x_train, y_train)
        predicted = model.predict(x_test)
    return float(f1_score(y_test, predicted, average="macro"))


class GowerSpace:
    """Rows as vectors whose L1 distance / columns is their Gower distance (training scale)."""

    def __init__(self, reference: pd.DataFrame, schema: TableSchema) -> None:
        self.schema = schema
        self.low, self.span, self.categories = {}, {}, {}
        for c in schema.columns:
            if c.numeric:
                values = reference[c.name].astype(float)
                self.low[c.name] = float(values.min())
                self.span[c.name] = max(float(values.max() - values.min()), 1e-12)
            else:
                self.categories[c.name] = sorted(set(reference[c.name].astype(str)))

    def embed(self, frame: pd.DataFrame) -> np.ndarray:
        parts = []
        for c in self.schema.columns:
            if c.numeric:
                x = (frame[c.name].astype(float).to_numpy() - self.low[c.name]) / self.span[c.name]
                parts.append(x[:, None])
            else:
                # Half-weight one-hots: two different categories are 1 apart in L1.
                cats = self.categories[c.name]
                codes = pd.Categorical(frame[c.name].astype(str), categories=cats).codes
                block = np.zeros((len(frame), len(cats) + 1))
                block[np.arange(len(frame)), np.where(codes < 0, len(cats), codes)] = 0.5
                parts.append(block)
        return np.concatenate(parts, axis=1) / len(self.schema.columns)

    def closest(self, rows: pd.DataFrame, reference: pd.DataFrame) -> np.ndarray:
        """Gower distance of each row to its closest reference row."""
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=1, metric="manhattan").fit(self.embed(reference))
        return np.asarray(nn.kneighbors(self.embed(rows))[0][:, 0])


def distance_to_closest_record(
    synthetic: pd.DataFrame,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    schema: TableSchema,
    rng: np.random.Generator,
) -> dict[str, float]:
    """The DCR figures of the module docstring (at most ``MAX_DISTANCE_ROWS`` rows a side)."""
    n = min(len(holdout), len(synthetic), MAX_DISTANCE_ROWS)
    synthetic = synthetic.iloc[rng.permutation(len(synthetic))[:n]]
    holdout = holdout.iloc[rng.permutation(len(holdout))[:n]]
    train_part = train.iloc[rng.permutation(len(train))[:n]]
    space = GowerSpace(train, schema)
    to_train_all = space.closest(synthetic, train)
    to_train = space.closest(synthetic, train_part)
    to_holdout = space.closest(synthetic, holdout)
    return {
        "dcr_synthetic_train": float(np.median(to_train_all)),
        "dcr_holdout_train": float(np.median(space.closest(holdout, train))),
        # A tie counts half: on a table of few categories most synthetic rows sit at
        # distance 0 from both sets, which says nothing either way (strictly closer, as
        # SDMetrics counts, would read near 0 there: "anti-memorisation").
        "dcr_closer_to_train": float(
            np.mean((to_train < to_holdout) + 0.5 * (to_train == to_holdout))
        ),
    }


class TableEvaluator:
    """Quality of a table task's rows against the real training rows and the holdout.

    Args:
        train, holdout: the real rows (pooled training rows, the server holdout).
        quality_rows: synthetic (and real) rows of the quality report and DCR.
        tstr_rows: synthetic rows the TSTR classifier is trained on (at most the
            number of training rows).
        tstr_repeats: synthetic draws TSTR is measured on; ``ml_efficacy`` is their
            mean and ``ml_efficacy_std`` their spread.
    """

    def __init__(
        self,
        train: pd.DataFrame,
        holdout: pd.DataFrame,
        schema: TableSchema,
        target: str,
        seed: int,
        quality_rows: int = 2000,
        tstr_rows: int = 30000,
        tstr_repeats: int = 1,
    ) -> None:
        if tstr_repeats < 1:
            raise ValueError(f"tstr_repeats must be >= 1, got {tstr_repeats}")
        self.train, self.holdout, self.schema, self.target = train, holdout, schema, target
        self.seed = seed
        self.quality_rows = min(quality_rows, len(train))
        self.tstr_rows = min(tstr_rows, len(train))
        self.tstr_repeats = tstr_repeats
        self._real_efficacy: float | None = None

    def real_efficacy(self) -> float:
        """TRTR: the classifier trained on the real training rows (computed once)."""
        if self._real_efficacy is None:
            self._real_efficacy = ml_efficacy(
                self.train, self.holdout, self.schema, self.target, self.seed
            )
        return self._real_efficacy

    def evaluate_table(
        self,
        synthetic: pd.DataFrame,
        final: bool,
        tstr_synthetic: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
    ) -> dict[str, float]:
        """Every figure of synthetic rows (TSTR on ``tstr_synthetic`` when given; with
        ``tstr_repeats`` draws, read one at a time, TSTR is their mean).

        Raises:
            ValueError: the number of TSTR draws is not ``tstr_repeats``.
        """
        rng = np.random.default_rng(self.seed)
        real = self.train.iloc[rng.permutation(len(self.train))[: len(synthetic)]]
        figures = quality_report(
            real.reset_index(drop=True), synthetic.reset_index(drop=True), self.schema
        )
        if final:
            if tstr_synthetic is None:
                draws: Iterable[pd.DataFrame] = [synthetic]
            elif isinstance(tstr_synthetic, pd.DataFrame):
                draws = [tstr_synthetic]
            else:
                draws = tstr_synthetic
            # The gradient-boosted classifier is deterministic at these sizes (its
            # random_state only subsamples bins above 200,000 rows), so the spread is the
            # synthetic draws'; each draw is fitted and dropped before the next is read.
            runs = [
                {
                    "ml_efficacy": ml_efficacy(
                        rows, self.holdout, self.schema, self.target, self.seed
                    )
                }
                for rows in draws
            ]
            if len(runs) != self.tstr_repeats:
                raise ValueError(
                    f"TSTR got {len(runs)} synthetic draw(s) but tstr_repeats is "
                    f"{self.tstr_repeats}; pass one draw per repeat"
                )
            efficacy = mean_over_repeats(runs, std_of="ml_efficacy")
            tstr = efficacy["ml_efficacy"]
            real_f1 = self.real_efficacy()
            figures.update(efficacy)
            figures.update(
                ml_efficacy_real=real_f1,
                ml_efficacy_ratio=tstr / real_f1 if real_f1 > 0 else float("nan"),
            )
            figures.update(
                distance_to_closest_record(synthetic, self.train, self.holdout, self.schema, rng)
            )
        return figures

    def evaluate_task(self, task: Any, generator: torch.Generator, final: bool) -> dict[str, float]:
        """Quality report every evaluation; TSTR and DCR at the final one."""
        synthetic = task.sample(self.quality_rows, generator)
        # A generator expression: each draw is sampled when TSTR reaches it.
        draws = (
            (task.sample(self.tstr_rows, generator) for _ in range(self.tstr_repeats))
            if final
            else None
        )
        return self.evaluate_table(synthetic, final, draws)

    def describe(self) -> dict[str, str]:
        """What each key was computed on."""
        real = f"{len(self.train)} real training rows, {len(self.holdout)} held-out real rows"
        spread = {
            "ml_efficacy_std": "sample standard deviation of ml_efficacy over the "
            f"{self.tstr_repeats} TSTR draws"
        }
        return {
            **(spread if self.tstr_repeats > 1 else {}),
            "quality_score": f"sdmetrics QualityReport score, {self.quality_rows} synthetic "
            f"rows against as many real training rows ({real})",
            "column_shapes": "sdmetrics Column Shapes (KS / TV complement, mean over columns)",
            "column_pair_trends": "sdmetrics Column Pair Trends (correlation / contingency "
            "similarity, mean over column pairs)",
            "ml_efficacy": f"macro F1 on the held-out real rows of a gradient-boosted "
            f"classifier of {self.target!r} trained on {self.tstr_rows} synthetic rows (TSTR)"
            + (f"; mean over {self.tstr_repeats} synthetic draws" if self.tstr_repeats > 1 else ""),
            "ml_efficacy_real": "the same classifier trained on the real training rows (TRTR)",
            "ml_efficacy_ratio": "ml_efficacy / ml_efficacy_real",
            "dcr_synthetic_train": "median Gower distance of synthetic rows to the closest "
            "real training row",
            "dcr_holdout_train": "median Gower distance of held-out real rows to the closest "
            "real training row (the reference: real rows never trained on)",
            "dcr_closer_to_train": "share of synthetic rows closer to the training rows than "
            "to as many held-out rows, a tie counting half (0.5: no sign of memorisation)",
        }


@EVALUATORS.register("tables")
def table_evaluator(data: Any, *, seed: int, settings: EvalConfig) -> TableEvaluator:
    """The tables evaluator of a run: ``data`` is a ``fedgen.data.table_data.FederatedTable``."""
    return TableEvaluator(
        data.train,
        data.holdout,
        data.schema,
        data.target,
        seed,
        quality_rows=settings.num_quality_samples,
        tstr_rows=settings.tstr_samples,
        tstr_repeats=settings.tstr_repeats,
    )
