"""``task.params.compute_dtype``: local training under bfloat16 autocast, float32 elsewhere.

A recipe that asks for ``bfloat16`` must get it wherever a client trains (the matrix
products and convolutions of every step), keep float32 weights, updates and samples,
and be refused where bfloat16 would break a guarantee (DP-SGD's per-example clipping).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_federation import TINY_DPSGD, tiny_config
from torch import nn

from fedgen.engine.image_union import own_states
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment


@contextmanager
def output_dtypes(modules: dict[str, nn.Module]) -> Iterator[list[torch.dtype]]:
    """The dtypes every Linear and convolution of ``modules`` produces inside the block."""
    seen: list[torch.dtype] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        for module in modules.values()
        for m in module.modules()
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d)
    ]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def one_round(mnist_dir: Path, **overrides: Any) -> tuple[Any, list[torch.dtype]]:
    """One round of the tiny federation; the federation and the dtypes its task's layers
    produced during it."""
    cfg = tiny_config(mnist_dir, **{"ledger": "false", "federation.rounds": 1, **overrides})
    fed = build_experiment(cfg).federation
    with output_dtypes(fed.task.modules) as seen:
        assert fed.run()
    return fed, seen


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_local_training_computes_in_the_dtype_asked_and_keeps_float32_weights(mnist_dir, dtype):
    # Execute
    fed, seen = one_round(mnist_dir, **{"task.params.compute_dtype": dtype})
    # Assert: every layer of every step in the dtype asked; the model stays float32.
    assert seen and set(seen) == {getattr(torch, dtype)}
    state = fed.global_state
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    # Sampling runs outside local training: float32 whatever the recipe trains in.
    images = fed.task.sample(torch.arange(4) % 10, torch.Generator().manual_seed(0))
    assert images.dtype == torch.float32


def test_bfloat16_changes_what_a_round_computes(mnist_dir):
    # Negative control of the test above: the hooks could see bfloat16 outputs that never
    # reached the update; the trained model must differ from float32's, yet only slightly.
    f32, _ = one_round(mnist_dir, **{"task.params.compute_dtype": "float32"})
    bf16, _ = one_round(mnist_dir, **{"task.params.compute_dtype": "bfloat16"})
    moved = [
        float((f32.global_state[k] - bf16.global_state[k]).abs().max())
        for k in f32.global_state
        if f32.global_state[k].is_floating_point()
    ]
    assert max(moved) > 0
    assert max(moved) < 0.05  # 2 Adam steps of lr 2e-4 move a weight by at most ~4e-4


def test_a_clients_evaluation_fine_tune_trains_in_the_dtype_asked(mnist_dir):
    # The union of fine-tuned client models (evaluation) trains each client on its own
    # shard: in bfloat16 too, as the recipe's clients trained.
    fed, _ = one_round(mnist_dir, **{"task.params.compute_dtype": "bfloat16"})
    with output_dtypes(fed.task.modules) as seen, torch.no_grad():  # as evaluation calls it
        states = own_states(fed, "finetuned", 1, seed=0)
    assert len(states) == len(fed.clients)
    assert torch.bfloat16 in seen  # the fine-tune's steps (sampling adds none here)
    assert all(
        v.dtype == torch.float32
        for s in states.values()
        for v in s.values()
        if v.is_floating_point()
    )


def test_vectorized_backend_trains_bfloat16_clients_as_inprocess_does(mnist_dir, caplog):
    # vmap's batched operations escape torch.autocast, so bfloat16 clients train one
    # by one through train_local, which computes exactly what the in-process backend does.
    dtype = {"task.params.compute_dtype": "bfloat16"}
    inprocess, _ = one_round(mnist_dir, **dtype)
    with caplog.at_level(logging.WARNING, logger="fedgen.engine.backends.vectorized"):
        vectorized, seen = one_round(mnist_dir, **dtype, **{"backend.name": "vectorized"})
    assert "compute_dtype bfloat16" in caplog.text
    assert set(seen) == {torch.bfloat16}
    for key, value in inprocess.global_state.items():
        assert torch.equal(vectorized.global_state[key], value), key


def test_vectorized_without_fallback_refuses_bfloat16_with_the_reason(mnist_dir):
    cfg = tiny_config(
        mnist_dir,
        ledger="false",
        **{
            "task.params.compute_dtype": "bfloat16",
            "backend.name": "vectorized",
            "backend.params": "{fallback: false}",
        },
    )
    with pytest.raises(ConfigError, match="compute_dtype bfloat16"):
        build_experiment(cfg).federation.run_round(0)


def test_dpsgd_refuses_bfloat16_per_example_gradients(mnist_dir):
    cfg = tiny_config(
        mnist_dir, ledger="false", **TINY_DPSGD, **{"task.params.compute_dtype": "bfloat16"}
    )
    with pytest.raises(ConfigError, match="compute_dtype=float32 for DP-SGD"):
        build_experiment(cfg)


def test_an_unknown_compute_dtype_is_a_config_error_naming_the_choices(mnist_dir):
    with pytest.raises(ConfigError, match=r"float32.*bfloat16"):
        build_experiment(tiny_config(mnist_dir, **{"task.params.compute_dtype": "float16"}))


def test_a_forward_inside_the_block_sees_the_weights_a_step_changed(mnist_dir):
    # Local training steps its optimizers inside task.autocast(): autocast's default cast
    # cache would keep serving the weights' first bfloat16 copy, so every step of a round
    # would compute on the round's starting weights.
    cfg = tiny_config(mnist_dir, **{"ledger": "false", "task.params.compute_dtype": "bfloat16"})
    task = build_experiment(cfg).federation.task
    D = task.modules["discriminator"]
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    layers = [m for m in D.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in layers]
    with task.autocast():
        D(x, y)
        with torch.no_grad():
            for p in D.parameters():
                p.add_(0.1)  # in place, as an optimizer's step
        D(x, y)
    for h in hooks:
        h.remove()
    first, second = outputs[: len(layers)], outputs[len(layers) :]
    assert {o.dtype for o in outputs} == {torch.bfloat16}  # inside the block, as asked
    assert all(not torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_huscf_discriminator_keeps_p_real_in_float32_under_bfloat16():
    # In bfloat16 the logit moves in steps of 0.03 near 7 and its sigmoid rounds every
    # P(real) above 0.998 to 1, where the published binary cross-entropy saturates; the
    # tail computes the logit and P(real) in float32.
    from fedgen.split.huscf_gan import FAITHFUL, DiscriminatorTail

    torch.manual_seed(0)
    tail = DiscriminatorTail(FAITHFUL)
    with torch.no_grad():
        tail[1].bias.fill_(7.0)  # random weights around a confident logit
    h = torch.randn(64, FAITHFUL.channels()[3], 3, 3)
    with torch.no_grad():
        want = torch.sigmoid(tail[1](tail[0](h)))  # float32 throughout
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p_real = tail(h)
    assert p_real.dtype == torch.float32
    assert bool((p_real < 1).all())
    torch.testing.assert_close(p_real, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_bfloat16_recipe_warns_where_the_cpu_would_emulate_it(
    mnist_dir, dtype, native, caplog, monkeypatch
):
    # oneDNN's answer for the machine decides; both answers are played here.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    cfg = tiny_config(mnist_dir, **{"task.params": f"{{compute_dtype: {dtype}}}"})
    with caplog.at_level(logging.WARNING, logger="fedgen.experiment"):
        build_experiment(cfg)
        # A loaded run samples in float32 and trains nothing: it is not warned.
        build_experiment(cfg, start_weights=False)
    warned = [r.getMessage() for r in caplog.records if "without bfloat16 support" in r.message]
    assert len(warned) == (dtype == "bfloat16" and not native)
    if warned:
        assert "set task.params.compute_dtype=float32" in warned[0]
