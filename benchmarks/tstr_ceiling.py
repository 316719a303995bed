"""TSTR's ceiling: the same protocol run on real training images instead of generated ones.

A TSTR figure is only as high as its protocol allows: a fresh ``SmallCNN`` trained
``fedgen.eval.tstr.TSTR_EPOCHS`` epochs on N images scores far below the same network
trained on the whole training split when N is small. This script trains it on N real
training images (class-balanced, as generated sets are) and scores it on the real test
split, for several N and seeds, so a generator's TSTR can be read against what real
data of the same count reaches. One row per (source, N, seed) is appended to
``benchmarks/results/tstr_ceiling.md`` as it is measured.

    PYTHONPATH=src taskset -c 0 .venv/bin/python benchmarks/tstr_ceiling.py \
        --sources fashion-mnist mnist --counts 3000 10000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fedgen.data.sources import load_domains
from fedgen.eval.tstr import TSTR_EPOCHS, train_synthetic_test_real
from fedgen.report.results_table import ResultsTable
from fedgen.seeding import torch_generator

RESULTS = Path(__file__).resolve().parent / "results" / "tstr_ceiling.md"
COLUMNS = ["source", "real_images", "seed", "accuracy", "f1", "seconds"]


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` images of every class, drawn without replacement."""
    gen = torch_generator(seed, "tstr-ceiling")
    picks = []
    for c in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < per_class:
            raise SystemExit(f"class {c} has {len(members)} images, fewer than {per_class}")
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=["fashion-mnist"])
    parser.add_argument("--counts", nargs="+", type=int, default=[3000, 10000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = ResultsTable(args.results, COLUMNS)
    table.start(
        "tstr_ceiling",
        [
            f"SmallCNN, {TSTR_EPOCHS} epochs, batch 64 (fedgen.eval.tstr), trained on N real "
            "training images, N/10 of each class; scored on the whole real test split"
        ],
    )
    for source in args.sources:
        train, test = load_domains([source], "train"), load_domains([source], "test")
        num_classes = int(train.labels.max()) + 1
        for count in args.counts:
            for seed in args.seeds:
                idx = balanced_subset(train.labels, count // num_classes, seed)
                t0 = time.perf_counter()
                scores = train_synthetic_test_real(
                    train.subset(idx).float_images(),
                    train.labels[idx],
                    test.float_images(),
                    test.labels,
                    num_classes,
                    seed=seed,
                )
                row = {
                    "source": source,
                    "real_images": len(idx),
                    "seed": seed,
                    "accuracy": scores.accuracy,
                    "f1": scores.f1,
                    "seconds": time.perf_counter() - t0,
                }
                print(table.append(row), flush=True)


if __name__ == "__main__":
    main()
