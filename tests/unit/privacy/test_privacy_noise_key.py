"""The secret that seeds DP noise: keyed draws, root fallback, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from fedgen.privacy.noise_key import (
    KEY_BYTES,
    key_from_state,
    key_to_state,
    new_noise_key,
    noise_generator,
)
from fedgen.seeding import torch_generator
from fedgen.transforms.base import TransformContext


def draw(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(64, generator=gen)


def test_keys_are_fresh_256_bit_secrets():
    keys = {new_noise_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) == KEY_BYTES for k in keys)


def test_keyed_noise_depends_on_key_seed_and_path_and_is_repeatable():
    key = new_noise_key()
    ref = draw(noise_generator(key, 7, "client_dp", "noise"))
    assert torch.equal(ref, draw(noise_generator(key, 7, "client_dp", "noise")))
    for other in (
        noise_generator(new_noise_key(), 7, "client_dp", "noise"),
        noise_generator(key, 8, "client_dp", "noise"),
        noise_generator(key, 7, "clip", "unclipped-count"),
    ):
        assert not torch.equal(ref, draw(other))


def test_keyed_noise_is_not_the_root_seeded_noise():
    root = draw(torch_generator(7, "client_dp", "noise"))
    assert torch.equal(root, draw(noise_generator(None, 7, "client_dp", "noise")))
    assert not torch.equal(root, draw(noise_generator(new_noise_key(), 7, "client_dp", "noise")))


def test_transform_context_draws_with_its_key_and_hides_it_from_repr():
    key = new_noise_key()
    ctx = TransformContext(round=0, client_id=None, seed=3, num_clients=4, noise_key=key)
    assert torch.equal(draw(ctx.noise_generator("x")), draw(noise_generator(key, 3, "x")))
    assert key.hex() not in repr(ctx) and str(list(key)) not in repr(ctx)


def test_checkpoint_form_round_trips_and_rejects_garbage():
    key = new_noise_key()
    assert key_from_state(key_to_state(key)) == key
    assert key_from_state(key_to_state(None)) is None
    for bad in ("abc", 12, "zz" * KEY_BYTES):
        with pytest.raises(ValueError):
            key_from_state(bad)
