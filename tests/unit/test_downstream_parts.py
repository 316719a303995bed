"""The downstream parts with hand-computed answers: top-up counts, one-shot allocation,
the one-shot message's bytes, and the range check of the top-up ratio."""

from __future__ import annotations

import pytest
import torch

from fedgen.config import load_config
from fedgen.data.dataset import ImageDataset
from fedgen.downstream.errors import DownstreamError
from fedgen.downstream.one_shot import allocate, client_message
from fedgen.downstream.pipeline import classifier_pipeline
from fedgen.downstream.privacy_note import privacy_note, synthetic_only_note
from fedgen.downstream.run import _check_test_examples, scored_test_split
from fedgen.downstream.stratified import stratified_counts
from fedgen.downstream.topup import topup_counts
from fedgen.errors import ConfigError
from fedgen.tasks.classifier import ClassifierParams, ClassifierTask
from fedgen.tasks.vae import ConditionalVae, VaeParams
from fedgen.wire import Message, decode, encode


def test_topup_brings_every_class_to_ratio_times_the_largest():
    # Prepare: a client with 100 of class 0, 10 of class 1, none of class 2.
    counts = [100, 10, 0]

    # Execute / Assert: ratio 1 balances, 0.5 tops up to 50, 0 adds nothing, cap binds.
    assert topup_counts(counts, 1.0, 1000) == [0, 90, 100]
    assert topup_counts(counts, 0.5, 1000) == [0, 40, 50]
    assert topup_counts(counts, 0.0, 1000) == [0, 0, 0]
    assert topup_counts(counts, 1.0, 30) == [0, 20, 30]


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_topup_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        topup_counts([5, 1], ratio, 10)


@pytest.mark.parametrize("ratio", ["-0.5", "1.01"])
def test_recipe_topup_ratio_outside_unit_interval_names_the_key(ratio):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"downstream.topup_ratio={ratio}"])
    message = str(err.value)
    assert "downstream.topup_ratio" in message
    assert "give a value in [0, 1]" in message


def test_allocate_follows_reported_counts_and_adds_up():
    # Prepare: two clients; client 0 holds 3/4 of all examples, all of class 0.
    counts = [[30, 0], [5, 5]]

    # Execute
    shares = allocate(counts, 8)

    # Assert: 8 * 30/40 = 6, 8 * 5/40 = 1 each.
    assert shares == [[6, 0], [1, 1]]
    assert sum(map(sum, allocate(counts, 7))) == 7  # largest remainders keep the total


def test_one_shot_message_is_the_decoder_and_counts_on_the_wire():
    # Prepare
    task = ConditionalVae(VaeParams(width=8, latent_dim=4), 3, (1, 28, 28), seed=0)

    # Execute
    raw = client_message(task, "decoder", 7, [4, 0, 2])
    message = decode(raw)

    # Assert: only the decoder travels, bit for bit, with the label counts.
    decoder = task.modules["decoder"].state_dict()
    assert set(message.arrays) == {f"decoder.{k}" for k in decoder}
    for k, v in decoder.items():
        assert torch.equal(message.arrays[f"decoder.{k}"], v)
    assert message.meta == {"client": 7, "label_counts": [4, 0, 2]}
    assert len(raw) == len(encode(Message(dict(message.arrays), message.meta)))
    assert len(raw) > 4 * sum(v.numel() for v in decoder.values())


def test_privacy_note_inherits_only_what_post_processing_covers():
    assert "no guarantee" in privacy_note("topup", None, None)
    topup = privacy_note("topup", 3.0, 1e-5)
    assert "post-processing" in topup and "not covered" in topup
    assert "(3, 1e-05)-DP by post-processing" in str(synthetic_only_note(3.0, 1e-5))
    assert synthetic_only_note(None, None) is None


def test_an_unknown_transform_or_strategy_in_the_downstream_section_is_named():
    cfg = load_config(
        None,
        [
            "downstream.strategy={name: fedavgg}",
            "downstream.transforms=[{name: clipp}]",
        ],
    )
    task = ClassifierTask(ClassifierParams(), 10, (1, 28, 28), seed=0)
    with pytest.raises(DownstreamError) as err:
        classifier_pipeline(cfg.downstream, 0, task, [])
    assert "downstream.strategy.name: unknown 'fedavgg'" in str(err.value)
    assert "downstream.transforms[0].name: unknown 'clipp'" in str(err.value)


@pytest.mark.parametrize("mode", ["server_finetune", "one_shot_finetune"])
def test_a_fine_tuning_arm_without_server_steps_is_refused(mode):
    # It would be the real arm reported under another name (and, for one_shot_finetune,
    # with the one-shot generators' bytes and seconds added).
    with pytest.raises(ConfigError, match=f"server_steps is 0, so arm {mode} would never"):
        load_config(None, [f"downstream.modes=[real, {mode}]", "downstream.server_steps=0"])
    load_config(None, ["downstream.modes=[real, one_shot]", "downstream.server_steps=0"])


def test_stratified_counts_share_equally_and_pass_on_what_a_small_class_lacks():
    # Class 0 holds 1 image: its share of 9 (3) falls to 1, the other two take 4 each.
    assert stratified_counts([1, 50, 50], 9, order=[0, 1, 2]) == [1, 4, 4]
    # 10 over 3 classes: 3 each, the one left over to the first class in the seeded order.
    assert stratified_counts([50, 50, 50], 10, order=[2, 0, 1]) == [3, 3, 4]
    assert stratified_counts([2, 3], 99, order=[0, 1]) == [2, 3]  # never more than exist


def test_a_small_scored_test_split_holds_every_class():
    # Prepare: a test split of 1,000 images, 900 of them class 0, 100 spread over 1..9.
    labels = torch.cat([torch.zeros(900, dtype=torch.int64), torch.arange(100) % 9 + 1])
    images = torch.zeros(1000, 1, 28, 28, dtype=torch.uint8)
    test = ImageDataset("toy", images, labels, tuple(str(d) for d in range(10)))
    # Execute
    subset = scored_test_split(test, 10, seed=0)
    # Assert: one image of each class, so no arm's worst class is 0 for want of one.
    assert torch.bincount(subset.labels, minlength=10).tolist() == [1] * 10
    assert scored_test_split(test, 20, seed=0).labels.tolist() == (
        scored_test_split(test, 20, seed=0).labels.tolist()
    )  # seeded: every arm scores on the same images
    assert scored_test_split(test, None, seed=0) is test
    with pytest.raises(DownstreamError, match="test_examples is 5 but the data has 10 classes"):
        scored_test_split(test, 5, seed=0)


def test_test_examples_below_the_class_count_is_refused_before_anything_trains():
    cfg = load_config(None, ["downstream.test_examples=10"])
    # The recipe's bound (>= 10) is every image source's class count today; below it:
    dcfg = cfg.downstream.model_copy(update={"test_examples": 9})
    with pytest.raises(DownstreamError, match="set test_examples >= 10"):
        _check_test_examples(cfg, dcfg)
    _check_test_examples(cfg, cfg.downstream)
