"""Unsound placements of an update codec are refused before round 1, each saying why."""

from __future__ import annotations

import pytest
from tiny_federation import tiny_config as shared_tiny_config

from fedgen.assembly.compression import compression_problems
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.seeding import derive_seed
from fedgen.transforms.sparsify import RandomMask, TopK

CLIP = "{name: clip, params: {max_norm: 2.0}}"
DP_STRATEGY = (
    "{fraction: 1.0, min_clients: 1, weighted: false, sampling: poisson, fixed_denominator: true}"
)
DP = "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-3}}"
SA = "{name: secagg}"
TOPK = "{name: topk, params: {fraction: 0.1}}"
MASK = "{name: random_mask, params: {fraction: 0.1}}"


def tiny_config(mnist_dir, **overrides):
    """The shared tiny federation, one round of one step."""
    return shared_tiny_config(
        mnist_dir, **{"federation.rounds": 1, "federation.local_steps": 1, **overrides}
    )


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"transforms": f"[{TOPK}, {MASK}]"}, "keep one (a second codec would encode"),
        ({"transforms": f"[{TOPK}, {CLIP}]"}, "list clip first, so it bounds the update"),
        ({"transforms": f"[{CLIP}, {TOPK}, {SA}]"}, "cannot be summed under the masks"),
        (
            {"transforms": f"[{CLIP}, {{name: quantize}}, {SA}]"},
            "use random_mask (a shared-seed mask), or drop secagg",
        ),
        (
            {"transforms": f"[{CLIP}, {{name: random_mask, params: {{rescale: true}}}}, {SA}]"},
            "set rescale: false",
        ),
        (
            {"strategy.params": DP_STRATEGY, "transforms": f"[{CLIP}, {TOPK}, {DP}]"},
            "error feedback adds the residual",
        ),
        (
            {"strategy.params": DP_STRATEGY, "transforms": f"[{CLIP}, {{name: cast}}, {DP}]"},
            "use topk or sign with error_feedback: false, lowrank with bits: 32",
        ),
        (
            {"backend.name": "split", "transforms": f"[{TOPK}]"},
            "exchange activations and gradients",
        ),
    ],
    ids=[
        "two-codecs",
        "clip-after",
        "topk-secagg",
        "quantize-secagg",
        "rescale-secagg",
        "ef-client-dp",
        "cast-client-dp",
        "split",
    ],
)
def test_an_unsound_codec_placement_is_refused_saying_why(mnist_dir, overrides, why):
    with pytest.raises(ConfigError, match=why.replace("(", r"\(").replace(")", r"\)")):
        build_experiment(tiny_config(mnist_dir, **overrides))


@pytest.mark.parametrize(
    "transforms",
    [
        f"[{CLIP}, {MASK}, {SA}]",
        f"[{CLIP}, {{name: topk, params: {{error_feedback: false}}}}, {DP}]",
        f"[{CLIP}, {MASK}, {DP}]",
        f"[{CLIP}, {{name: qsgd}}]",
    ],
    ids=["mask-secagg", "topk-no-ef-dp", "mask-dp", "clip-qsgd"],
)
def test_a_sound_placement_builds(mnist_dir, transforms):
    overrides = {"transforms": transforms}
    if "client_dp" in transforms:
        overrides["strategy.params"] = DP_STRATEGY
    assert build_experiment(tiny_config(mnist_dir, **overrides)).federation is not None


def test_compression_after_dpsgd_is_post_processing_and_accepted(mnist_dir):
    cfg = tiny_config(
        mnist_dir,
        transforms="[{name: quantize, params: {bits: 2}}]",
        **{
            "dpsgd": "{noise_multiplier: 1.0, max_grad_norm: 1.0}",
            "task.params.fake_labels": "uniform",
            "task.params.batch_size": 64,
        },
    )
    assert build_experiment(cfg).federation.privacy is not None


def test_the_random_mask_seed_follows_the_root_seed(mnist_dir):
    fed = build_experiment(tiny_config(mnist_dir, transforms=f"[{MASK}]", seed=5)).federation
    (mask,) = fed.transforms
    assert isinstance(mask, RandomMask)
    assert mask.mask_seed == derive_seed(5, "random_mask")


@pytest.mark.parametrize(
    ("plain", "compressed", "extra"),
    [
        (
            f"[{CLIP}, {DP}]",
            f"[{CLIP}, {{name: topk, params: {{error_feedback: false}}}}, {DP}]",
            {"strategy.params": DP_STRATEGY},
        ),
        (
            "[]",
            "[{name: quantize, params: {bits: 2}}]",
            {
                "dpsgd": "{noise_multiplier: 1.0, max_grad_norm: 1.0}",
                "task.params.fake_labels": "uniform",
                "task.params.batch_size": 64,
            },
        ),
    ],
    ids=["client-dp", "dp-sgd"],
)
def test_a_codec_leaves_the_epsilon_spent_unchanged(mnist_dir, plain, compressed, extra):
    # A codec applied to a clipped update (client-level) or to DP-SGD's noised model is
    # post-processing of what the mechanism bounds: the same round spends the same epsilon.
    spent = []
    for transforms in (plain, compressed):
        fed = build_experiment(tiny_config(mnist_dir, transforms=transforms, **extra)).federation
        record = fed.run_round(0)
        spent.append(record.metrics["epsilon"])
    assert spent[0] > 0
    assert spent[1] == spent[0]


def test_a_transform_that_failed_to_build_is_skipped_not_reported_as_after_the_codec():
    # Prepare: the second transform failed to build (None); its own error is reported.
    transforms = [TopK(0.1), None]
    # Execute
    problems = compression_problems(
        transforms=transforms, backend="inprocess", root_seed=0, dpsgd=False
    )
    # Assert
    assert problems == []
