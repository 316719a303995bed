"""Train the U-shaped split cGAN of HuSCF-GAN for a few iterations on real MNIST.

    FEDGEN_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/huscf/run_split.py \
        --clients 10 --iterations 3 --spec faithful

Clients get HuSCF-GAN's non-IID class-drop shares (``--domains mnist
fashion-mnist`` for two domains), device profiles as the published code
assigns them, and the cuts of the exact latency search. Each iteration is
timed on this machine (all clients and the server in one process, one
thread) and the bytes crossing the wire are counted; the analytic latency
of the same cuts on the modelled devices is printed beside them, with
FLOPs counted for this run's batch size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fedgen.data.class_drop import ClassDropPartitioner
from fedgen.data.sources import load_domains
from fedgen.seeding import torch_generator
from fedgen.split.cut import Cut
from fedgen.split.cut_search import exact_search
from fedgen.split.devices import assign_profiles, load_profiles
from fedgen.split.flops import measure_block_costs
from fedgen.split.huscf_gan import (
    CLUSTER_BLOCK,
    FAITHFUL,
    GROUPNORM,
    LIGHT,
    discriminator_blocks,
    generator_blocks,
)
from fedgen.split.latency import LatencyModel
from fedgen.split.messages import Channel
from fedgen.split.trainer import UShapedGanTrainer

ROOT = Path(__file__).resolve().parents[2]
SPECS = {"faithful": FAITHFUL, "groupnorm": GROUPNORM, "light": LIGHT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--spec", choices=sorted(SPECS), default="faithful")
    parser.add_argument("--domains", nargs="+", default=["mnist"])
    parser.add_argument("--scheme", default="non_iid")
    parser.add_argument("--samples-per-client", type=int, default=750)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    spec = SPECS[args.spec]

    data = load_domains(args.domains, "train", args.data_dir)
    domains = None if data.domains is None or len(args.domains) == 1 else data.domains.numpy()
    parts = ClassDropPartitioner(args.scheme, args.samples_per_client).split(  # type: ignore[arg-type]
        data.labels.numpy(), args.clients, np.random.default_rng(args.seed), domains
    )
    images = data.float_images() * 2 - 1  # [-1, 1], the generator's Tanh range

    server, devices = load_profiles(ROOT / "configs/huscf/devices.yaml")
    prof = assign_profiles(args.clients, len(devices), np.random.default_rng(args.seed))
    y = torch.randint(0, 10, (args.batch_size,))
    g_costs = measure_block_costs(
        generator_blocks(spec), (torch.randn(args.batch_size, spec.latent_dim), y)
    )
    d_costs = measure_block_costs(
        discriminator_blocks(spec), (torch.rand(args.batch_size, 1, 28, 28), y)
    )
    model = LatencyModel(g_costs, d_costs, [devices[p] for p in prof], server)
    best = exact_search(model, prof)
    g_cuts = {c: Cut.from_bits(*best.client_cuts[c, :2]) for c in range(args.clients)}
    d_cuts = {c: Cut.from_bits(*best.client_cuts[c, 2:]) for c in range(args.clients)}

    channel = Channel()
    trainer = UShapedGanTrainer(
        generator_blocks(spec),
        discriminator_blocks(spec),
        g_cuts,
        d_cuts,
        spec.latent_dim,
        channel=channel,
        capture_block=CLUSTER_BLOCK,
    )
    print(
        f"{args.clients} clients ({args.scheme}, {args.domains}), sizes "
        f"{[len(p) for p in parts]}, spec {args.spec}, batch {args.batch_size}"
    )
    print(f"cuts (G head, G tail, D head, D tail): {best.client_cuts.tolist()}")
    seconds, cpu, nbytes = [], [], []
    for it in range(args.iterations):
        batches = {}
        for c, rows in enumerate(parts):
            gen = torch_generator(args.seed, "batch", it, c)
            pick = torch.as_tensor(rows)[
                torch.randperm(len(rows), generator=gen)[: args.batch_size]
            ]
            batches[c] = (images[pick], data.labels[pick])
        c0 = time.process_time()
        res = trainer.step(batches, torch_generator(args.seed, "z", it))
        cpu.append(time.process_time() - c0)
        seconds.append(res.seconds)
        nbytes.append(res.bytes_up + res.bytes_down)
        print(
            f"iteration {it}: {res.seconds:.2f} s wall, {cpu[-1]:.2f} s CPU, "
            f"{res.bytes_up / 1e6:.1f} MB up + {res.bytes_down / 1e6:.1f} MB down, "
            f"D real {res.d_loss_real:.3f} fake {res.d_loss_fake:.3f} G {res.g_loss:.3f}, "
            f"failures {len(res.failures)}"
        )
    print(
        f"measured: {statistics.median(seconds):.2f} s/iteration (median wall, this CPU), "
        f"{statistics.median(cpu):.2f} s CPU, {statistics.median(nbytes) / 1e6:.1f} MB/iteration; "
        f"analytic latency of these cuts on the modelled devices: {best.latency:.3f} s/iteration"
    )


if __name__ == "__main__":
    main()
