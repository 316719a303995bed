"""The tiny real federation many tests run: 4 iid MNIST clients, a small cGAN.

One definition, imported by the tests that need it (pytest puts ``tests/`` on
``sys.path`` because ``tests/conftest.py`` lives there).
"""

from __future__ import annotations

from pathlib import Path

from fedgen.config import ExperimentConfig, load_config

#: Overrides that put the tiny cGAN under DP-SGD: uniform fake labels (the generator must
#: not read private labels) and batches of 32 (16 would risk empty Poisson batches).
TINY_DPSGD = {
    "task.params.fake_labels": "uniform",
    "task.params.batch_size": 32,
    "dpsgd": "{noise_multiplier: 1.0, max_grad_norm: 1.0, delta: 1.0e-5}",
}


def tiny_config(mnist_dir: Path, **overrides: object) -> ExperimentConfig:
    """4 iid MNIST clients, widths 8, 3 rounds x 2 steps, the sequential backend, one
    thread, a small final evaluation.

    ``overrides`` are dotted keys (``**{"federation.rounds": 1}``), applied last.
    The sequential backend unless a test asks for workers: tests' monkey-patched
    tasks and transforms need not be picklable.
    """
    items = [
        "data.sources=[mnist]",
        f"data.data_dir={mnist_dir}",
        "data.num_clients=4",
        "data.partition.kind=iid",
        "data.partition.params={}",
        "task.params={batch_size: 16, generator_width: 8, discriminator_width: 8}",
        "federation.rounds=3",
        "federation.local_steps=2",
        "strategy.params={min_clients: 2}",
        "backend.name=inprocess",
        # One torch thread, as the process pool's workers run: sums split across threads
        # differ in the last bits, so bit-for-bit comparisons of backends need equal counts
        # (without it they passed only after some earlier test had set one thread).
        "threads=1",
        # A small evaluation (its final TSTR trained 3 epochs on 30,000 images, a minute
        # or more per run on a slow core); tests that measure quality set their own.
        "eval.num_quality_samples=200",
        "eval.tstr_samples=500",
        "eval.tstr_epochs=1",
    ] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, items)
