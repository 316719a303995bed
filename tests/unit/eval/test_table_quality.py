"""Table evaluation figures on real rows: sanity bounds, and rare synthetic classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedgen.data.table_data import split_holdout
from fedgen.data.table_sources import FAIR
from fedgen.eval.table_quality import (
    GowerSpace,
    TableEvaluator,
    distance_to_closest_record,
    ml_efficacy,
)


@pytest.fixture(scope="module")
def fair_split():
    return split_holdout(FAIR.load(), 0.2, seed=0)


def test_tstr_survives_a_synthetic_class_of_one_row_among_many(fair_split):
    train, holdout = fair_split
    # 10,000+ rows (where sklearn would hold out a stratified validation split) with one
    # "yes": a collapsed synthesizer's output must still be scored, not crash.
    many = pd.concat([train, train], ignore_index=True)
    many["had_affair"] = "no"
    many.loc[0, "had_affair"] = "yes"
    f1 = ml_efficacy(many, holdout, FAIR.schema, "had_affair", 0)
    assert 0 <= f1 < 0.5  # about the macro F1 of always answering "no"


def test_real_rows_score_better_than_rows_with_shuffled_targets(fair_split):
    train, holdout = fair_split
    shuffled = train.copy()
    shuffled["had_affair"] = np.random.default_rng(0).permutation(shuffled["had_affair"])
    real = ml_efficacy(train, holdout, FAIR.schema, "had_affair", 0)
    assert real > ml_efficacy(shuffled, holdout, FAIR.schema, "had_affair", 0) + 0.1


def test_copies_of_training_rows_are_at_distance_zero_and_closer_to_train(fair_split):
    train, holdout = fair_split
    space = GowerSpace(train, FAIR.schema)
    assert np.allclose(space.closest(train.head(50), train), 0)
    figures = distance_to_closest_record(
        train.head(500), train, holdout, FAIR.schema, np.random.default_rng(0)
    )
    assert figures["dcr_synthetic_train"] == 0 < figures["dcr_holdout_train"]
    # Copies beat the no-memorisation 0.5, though only those whose row is in the equal-size
    # training subsample are exact hits (the rest tie or near-tie with the holdout).
    assert figures["dcr_closer_to_train"] > 0.55


def test_tstr_repeats_average_the_draws_one_at_a_time(fair_split):
    train, holdout = fair_split
    # Three "synthetic" draws: bootstrap samples of real rows, so each fit differs.
    rng = np.random.default_rng(1)
    draws = [train.iloc[rng.integers(0, len(train), 1500)] for _ in range(3)]
    quality = train.head(300)
    one = TableEvaluator(train, holdout, FAIR.schema, "had_affair", seed=0, quality_rows=300)
    three = TableEvaluator(
        train, holdout, FAIR.schema, "had_affair", seed=0, quality_rows=300, tstr_repeats=3
    )
    single = one.evaluate_table(quality, True, draws[0])
    read: list[int] = []

    def lazily():
        for i, d in enumerate(draws):
            read.append(i)
            yield d

    repeated = three.evaluate_table(quality, True, lazily())
    f1s = [ml_efficacy(d, holdout, FAIR.schema, "had_affair", 0) for d in draws]
    # The first draw is the single TSTR's figure; the three are averaged.
    assert single["ml_efficacy"] == f1s[0]
    assert read == [0, 1, 2]
    assert repeated["ml_efficacy"] == pytest.approx(np.mean(f1s), abs=1e-12)
    assert repeated["ml_efficacy_std"] == pytest.approx(np.std(f1s, ddof=1), abs=1e-12)
    assert repeated["ml_efficacy_std"] > 0  # the draws do move the figure
    assert "ml_efficacy_std" not in single
    assert repeated["ml_efficacy_ratio"] == pytest.approx(
        repeated["ml_efficacy"] / repeated["ml_efficacy_real"]
    )
    assert "mean over 3 synthetic draws" in three.describe()["ml_efficacy"]
    # Fewer draws than repeats would average fewer than the description says.
    with pytest.raises(ValueError, match=r"TSTR got 1 synthetic draw.* tstr_repeats is 3"):
        three.evaluate_table(quality, True, draws[0])


def test_tstr_repeats_below_one_is_refused(fair_split):
    train, holdout = fair_split
    with pytest.raises(ValueError, match="tstr_repeats must be >= 1, got 0"):
        TableEvaluator(train, holdout, FAIR.schema, "had_affair", seed=0, tstr_repeats=0)


def test_rows_as_close_to_the_holdout_as_to_training_read_as_no_memorisation(fair_split):
    # Prepare: a holdout that is the training rows themselves, and synthetic rows copied
    # from them: every synthetic row ties (distance 0 to both sets).
    train, _ = fair_split
    rows = train.head(400)
    # Execute
    figures = distance_to_closest_record(rows, rows, rows, FAIR.schema, np.random.default_rng(0))
    # Assert: a tie says nothing either way, so the share reads 0.5, not 0.
    assert figures["dcr_closer_to_train"] == pytest.approx(0.5)
