import torch

import fedgen.transforms.secagg  # noqa: F401  (registers "secagg")
from fedgen.registry import TRANSFORMS
from fedgen.transforms.base import TransformContext
from fedgen.transforms.secagg import SecAggConfig, SecAggConfigError, SecureAggregation


def test_registered_as_secagg_with_its_config():
    cls = TRANSFORMS.get("secagg")
    t = cls(threshold=0.75, modulus_bits=40, clip=0.5, neighbours=6, dropout_rate=0.1)
    assert cls is SecureAggregation
    assert t.config == SecAggConfig(
        threshold=0.75, modulus_bits=40, clip=0.5, neighbours=6, dropout_rate=0.1
    )
    assert "round loop runs the protocol" in " ".join((cls.__doc__ or "").split())


def test_halves_are_identity():
    t = SecureAggregation()
    upd = {"w": torch.ones(3)}
    ctx = TransformContext(round=0, client_id=1, seed=0, num_clients=3)
    assert t.on_client(upd, ctx) == (upd, {})
    assert t.on_server(upd, ctx) == (upd, {})


def test_bad_params_raise_config_error():
    try:
        SecureAggregation(threshold=1.5)
    except SecAggConfigError as exc:
        assert "threshold 1.5" in str(exc)
    else:
        raise AssertionError("threshold 1.5 accepted")


def test_dropout_simulation_is_seeded():
    t = SecureAggregation(dropout_rate=0.3)
    drops = t.dropouts(range(10), seed=1, round=4)
    assert len(drops) == 3 and set(drops) <= set(range(10))
    assert drops == t.dropouts(range(10), seed=1, round=4)
    assert SecureAggregation().dropouts(range(10), seed=1, round=4) == ()
