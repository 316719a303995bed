"""Per-client figures on a client's own label distribution (fedgen.eval.per_client)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgen.eval.per_client import ClientQuality, class_counts, label_proportions, summarise


def test_label_proportions_by_hand():
    # Prepare: 3 of class 0, 1 of class 2, none of class 1 (3 classes).
    labels = torch.tensor([0, 2, 0, 0])
    # Execute
    p = label_proportions(labels, 3)
    # Assert
    assert torch.equal(p, torch.tensor([0.75, 0.0, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="no label distribution"):
        label_proportions(torch.tensor([], dtype=torch.int64), 3)


def test_class_counts_split_by_largest_remainders():
    # 10 over (0.55, 0.25, 0.2): exact 5.5, 2.5, 2 -> floors 5, 2, 2 (9); one more goes to
    # the first of the tied remainders 0.5 (class 0).
    counts = class_counts(10, torch.tensor([0.55, 0.25, 0.2], dtype=torch.float64))
    assert counts.tolist() == [6, 2, 2]
    assert class_counts(7, torch.tensor([1.0, 0.0])).tolist() == [7, 0]


def test_summarise_gives_mean_and_the_worse_tail_of_each_figure():
    # Prepare: TSTR 0.1..1.0 over 10 clients, Frechet 10..100.
    per_client = {
        c: {"tstr_accuracy": (c + 1) / 10, "frechet_distance": 10.0 * (c + 1)} for c in range(10)
    }
    # Execute
    figures = summarise("global", per_client)
    # Assert: worst decile = 10th percentile of TSTR (low is bad), 90th of FD (high is bad).
    assert figures["client_tstr_accuracy_global"] == pytest.approx(0.55)
    tstr = np.array([(c + 1) / 10 for c in range(10)])
    assert figures["client_tstr_accuracy_global_worst_decile"] == pytest.approx(
        np.quantile(tstr, 0.1)
    )
    assert figures["client_tstr_accuracy_global_worst_decile"] == pytest.approx(0.19)
    assert figures["client_frechet_distance_global_worst_decile"] == pytest.approx(91.0)


@pytest.fixture(scope="module")
def quality(fashion_test, feature_classifier) -> ClientQuality:
    return ClientQuality(
        fashion_test.float_images(),
        fashion_test.labels,
        fashion_test.num_classes,
        feature_classifier.features,
        samples=300,
        epochs=2,
        seed=0,
    )


def test_real_images_of_the_clients_classes_score_far_above_noise(quality, fashion_train):
    # Prepare: a client holding classes 1 (trouser) and 7 (sneaker), 2:1; "generated"
    # images that are real training images of the labels asked for, against uniform noise.
    proportions = label_proportions(torch.tensor([1, 1, 7]), 10)
    labels = quality.labels_for(proportions, client_id=3)
    assert sorted(set(labels.tolist())) == [1, 7]
    assert int((labels == 1).sum()) == 200
    pools = {c: torch.nonzero(fashion_train.labels == c).flatten() for c in (1, 7)}
    rows = torch.cat([pools[c][: int((labels == c).sum())] for c in (1, 7)])
    order = torch.cat([torch.nonzero(labels == c).flatten() for c in (1, 7)])
    real = torch.empty(len(labels), 1, 28, 28)
    real[order] = fashion_train.float_images()[rows]
    noise = torch.rand(len(labels), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # Execute
    good = quality.figures(real, labels, proportions, 3)
    bad = quality.figures(noise, labels, proportions, 3)
    # Assert: trousers and sneakers are easy to tell apart from real examples; noise
    # teaches nothing beyond the majority class (accuracy near its share 2/3 or worse).
    assert good["tstr_accuracy"] > 0.9
    assert bad["tstr_accuracy"] < 0.8
    assert good["frechet_distance"] < bad["frechet_distance"] / 5


def test_real_comparison_images_follow_the_clients_classes(quality):
    proportions = torch.tensor([0.0, 0.0, 0.5, 0.0, 0.0, 0.5, 0, 0, 0, 0], dtype=torch.float64)
    images = quality.real_images_for(proportions, client_id=0)
    # The same draw again, and only images of classes 2 and 5, 150 each.
    assert torch.equal(images, quality.real_images_for(proportions, client_id=0))
    # Each image found in the test split by a random projection of its pixels.
    probe = torch.rand(28 * 28, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keys = (quality.test_images.flatten(1).double() @ probe).flatten()
    found = ((images.flatten(1).double() @ probe) - keys[None]).abs().argmin(1)
    classes = quality.test_labels[found]
    assert sorted(classes.unique().tolist()) == [2, 5]
    assert int((classes == 2).sum()) == 150
