"""Membership attacks separate a memorising model's training images from unseen ones."""

from __future__ import annotations

import pytest
import torch

from fedgen.attacks.membership import draw_candidates, membership_attack
from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.errors import ConfigError
from fedgen.tasks.gan import ConditionalGan, GanParams
from fedgen.tasks.vae import ConditionalVae, VaeParams

MEMBERS = 64


@pytest.fixture(scope="module")
def few_members(mnist_splits):
    """64 training digits and 64 test digits, both drawn with a fixed seed."""
    train, test = mnist_splits
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:MEMBERS]
    members = train.subset(rows)
    return members, draw_candidates(members, test, MEMBERS, torch.Generator().manual_seed(2))


def test_memorising_cgan_is_caught_by_both_attacks(few_members):
    # Prepare: 100 full-batch steps on 64 images (100 epochs) make the networks memorise.
    members, (inside, outside) = few_members
    params = GanParams(batch_size=64, generator_width=8, discriminator_width=8, lr=2e-3)
    task = ConditionalGan(params, 10, (1, 28, 28), seed=0)
    task.train_local(ClientData(0, members), 100, torch.Generator().manual_seed(1), {})
    # Execute
    result = membership_attack(
        task, inside, outside, torch.Generator().manual_seed(3), samples_per_class=200
    )
    # Assert: with 64 vs 64 candidates, chance AUC has a standard deviation of about 0.05.
    assert result.figures["members"] == result.figures["nonmembers"] == MEMBERS
    assert result.figures["logan_auc"] > 0.65
    assert result.figures["ganleaks_auc"] > 0.57
    assert set(result.curves) == {"logan", "ganleaks"}


def test_untrained_cgan_gives_chance(few_members):
    # A model that never saw the members cannot tell them apart.
    _, (inside, outside) = few_members
    params = GanParams(generator_width=8, discriminator_width=8)
    task = ConditionalGan(params, 10, (1, 28, 28), seed=0)
    result = membership_attack(
        task, inside, outside, torch.Generator().manual_seed(3), samples_per_class=50
    )
    assert 0.4 < result.figures["logan_auc"] < 0.6
    assert 0.4 < result.figures["ganleaks_auc"] < 0.6


def test_memorising_cvae_is_caught_by_its_elbo(few_members):
    members, (inside, outside) = few_members
    task = ConditionalVae(VaeParams(batch_size=64, width=8, lr=3e-3), 10, (1, 28, 28), seed=0)
    task.train_local(ClientData(0, members), 100, torch.Generator().manual_seed(1), {})
    result = membership_attack(
        task, inside, outside, torch.Generator().manual_seed(3), samples_per_class=200
    )
    assert result.figures["elbo_auc"] > 0.7
    assert set(result.curves) == {"elbo", "ganleaks"}


def test_same_seed_same_figures(few_members):
    _, (inside, outside) = few_members
    task = ConditionalGan(GanParams(generator_width=8, discriminator_width=8), 10, (1, 28, 28), 0)
    runs = [
        membership_attack(task, inside, outside, torch.Generator().manual_seed(9), 20).figures
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_asking_for_more_candidates_than_exist_is_a_clear_error(few_members, mnist_splits):
    members, _ = few_members
    with pytest.raises(ConfigError, match="pass n <= 64"):
        draw_candidates(members, mnist_splits[1], 65, torch.Generator().manual_seed(0))


def labelled(counts: dict[int, int], start: int = 0) -> ImageDataset:
    """``counts[c]`` images of class c; row i's pixels all equal ``(start + i) % 256``."""
    labels = torch.cat([torch.full((k,), c, dtype=torch.int64) for c, k in counts.items()])
    values = (torch.arange(len(labels)) + start) % 256
    images = values.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()
    return ImageDataset("toy", images, labels, tuple(str(d) for d in range(10)))


def label_counts(labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels, minlength=10).tolist()


def test_nonmembers_have_the_label_mix_of_the_members_under_label_skew():
    # Prepare: one client's shard under label skew (classes 1 and 7), a uniform test split.
    members = labelled({1: 30, 7: 10})
    test = labelled({c: 40 for c in range(10)}, start=100)
    # Execute
    draw = draw_candidates(members, test, 40, torch.Generator().manual_seed(0))
    # Assert: as many non-members of each label as members; nothing cut, nothing noted.
    expected = [0, 30, 0, 0, 0, 0, 0, 10, 0, 0]
    assert label_counts(draw.members.labels) == label_counts(draw.nonmembers.labels) == expected
    assert draw.notes == ()
    inside, outside = draw  # unpacks as the (members, nonmembers) pair it used to be
    assert inside is draw.members and outside is draw.nonmembers


def test_a_class_short_of_held_out_images_cuts_its_members_to_match_and_says_so():
    # Prepare: 10 members of class 7 but only 4 held-out images of it.
    members = labelled({1: 30, 7: 10})
    test = labelled({1: 50, 7: 4}, start=100)
    # Execute
    draw = draw_candidates(members, test, 40, torch.Generator().manual_seed(0))
    # Assert: class 7 keeps 4 members and all 4 held-out images; the cut is noted.
    expected = [0, 30, 0, 0, 0, 0, 0, 4, 0, 0]
    assert label_counts(draw.members.labels) == label_counts(draw.nonmembers.labels) == expected
    assert (
        len(draw.notes) == 1 and "class 7: only 4 held-out images for 10 members" in (draw.notes[0])
    )
