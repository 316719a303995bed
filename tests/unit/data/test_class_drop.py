"""HuSCF-GAN's class-drop partitions: reproducible, disjoint, and drawn with the published odds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from fedgen.data.class_drop import ClassDropPartitioner, drop_count_probabilities
from fedgen.errors import ConfigError
from fedgen.registry import PARTITIONERS


def test_registered() -> None:
    assert PARTITIONERS.get("class_drop") is ClassDropPartitioner


@pytest.mark.parametrize("scheme", ["iid", "non_iid", "highly_non_iid"])
def test_real_labels_reproducible_disjoint_and_sized(
    fashion_labels: np.ndarray, scheme: str
) -> None:
    # Prepare
    part = ClassDropPartitioner(scheme, samples_per_client=750)  # type: ignore[arg-type]
    # Execute
    a = part.split(fashion_labels, 20, np.random.default_rng(1))  # 20 per domain, as the paper
    b = part.split(fashion_labels, 20, np.random.default_rng(1))
    # Assert
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    joined = np.concatenate(a)
    assert len(np.unique(joined)) == len(joined)
    allowed = {"iid": {750}, "non_iid": {500, 750}, "highly_non_iid": {125, 250, 750}}[scheme]
    assert {len(p) for p in a} <= allowed
    if scheme == "iid":
        assert all(len(np.unique(fashion_labels[p])) == 10 for p in a)


def test_domains_go_to_their_clients() -> None:
    labels = np.tile(np.arange(10), 2000)
    domains = np.repeat([0, 1], 10000)
    parts = ClassDropPartitioner("non_iid", 300).split(labels, 6, np.random.default_rng(0), domains)
    for i, p in enumerate(parts):
        assert set(domains[p].tolist()) == {i % 2}


def test_drop_count_and_size_distributions_match_chi_square() -> None:
    # Prepare: 3000 clients with 400 examples each, none truncated (samples_per_client 1000).
    labels = np.tile(np.arange(10), 120_000)
    for scheme in ("non_iid", "highly_non_iid"):
        # Execute
        parts = ClassDropPartitioner(scheme, 1000).split(labels, 3000, np.random.default_rng(2))  # type: ignore[arg-type]
        dropped = np.array([10 - len(np.unique(labels[p])) for p in parts])
        # Assert: weights (.25, .3, .1, .1) are normalised as random.choices does.
        probs = drop_count_probabilities(scheme)
        observed = np.array([(dropped == k).sum() for k in probs])
        assert observed.sum() == 3000
        expected = 3000 * np.array(list(probs.values()))
        assert chisquare(observed, expected).pvalue > 1e-3
    assert drop_count_probabilities("non_iid")[2] == pytest.approx(0.4)
    # Sizes: non_iid holds 2/3 with p = 0.3.
    parts = ClassDropPartitioner("non_iid", 300).split(labels, 3000, np.random.default_rng(3))
    small = sum(len(p) == 200 for p in parts)
    assert chisquare([small, 3000 - small], [900, 2100]).pvalue > 1e-3


def test_bad_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        ClassDropPartitioner("mild")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="samples_per_client"):
        ClassDropPartitioner("iid", 0)
    with pytest.raises(ConfigError, match="only 3"):
        ClassDropPartitioner("non_iid").split(
            np.tile(np.arange(3), 50), 2, np.random.default_rng(0)
        )


def test_empty_client_is_config_error_naming_client_and_samples_per_client() -> None:
    # Prepare: ratio 1/6 of 5 samples rounds down to 0 (p = 0.2 per client).
    labels = np.tile(np.arange(10), 500)
    part = ClassDropPartitioner("highly_non_iid", samples_per_client=5)
    # Execute / Assert: seed 0 draws ratio 1/6 for client 0.
    with pytest.raises(
        ConfigError, match=r"highly_non_iid.*client 0.*samples_per_client to at least 6"
    ):
        part.split(labels, 10, np.random.default_rng(0))
    # 6 is enough for every draw.
    parts = ClassDropPartitioner("highly_non_iid", 6).split(labels, 10, np.random.default_rng(0))
    assert min(len(p) for p in parts) >= 1


def test_share_of_only_dropped_classes_is_config_error() -> None:
    # Prepare: 2 examples per client, and highly_non_iid drops 2 or 3 of 10 classes.
    labels = np.tile(np.arange(10), 2)
    part = ClassDropPartitioner("highly_non_iid", samples_per_client=750)
    # Execute / Assert: seed 0 leaves client 0 with only dropped classes.
    with pytest.raises(
        ConfigError, match=r"client 0 .*all in the classes it dropped.*fewer clients"
    ):
        part.split(labels, 10, np.random.default_rng(0))
