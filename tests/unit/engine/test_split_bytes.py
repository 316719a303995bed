"""Bytes the split backend reports per client, against a count by hand.

A client of a split round receives its own head and tail blocks at round start,
then every activation and gradient the server sends it; it sends its activations
and gradients up, then its own blocks' update. The server's blocks never travel.
"""

from __future__ import annotations

import pytest
import torch

from fedgen.data.class_drop import ClassDropPartitioner
from fedgen.data.federated import make_federated_data
from fedgen.engine.backends.base import LocalWork
from fedgen.engine.backends.split import SplitBackend
from fedgen.tasks.split_gan import HuscfGan, HuscfGanParams
from fedgen.types import ClientInstruction, RoundPlan

FLOAT = 4  # bytes of a float32
BATCH, STEPS = 16, 2

# G head, G tail, D head, D tail: 1 = the optional block (2nd / 2nd-to-last) on the client.
CUTS = [[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]]

# The light network (width 0.25: channels c256=64, c128=32, c64=16, c256d=64), by hand.
# Parameters per block (GroupNorm(8, C): 2C; no buffers anywhere):
#   G1 Embedding 10x10 + Linear(100 + 10 -> 64*7*7) + GN(64) = 100 + 348096 + 128
#   G2 ConvT(64->32, 4) + GN(32)   = 32768 + 32 + 64      G3 ConvT(32->32, 3) + GN = 9312
#   G4 ConvT(32->16, 4) + GN(16)   = 8192 + 16 + 32       G5 ConvT(16->1, 3)       = 145
#   D1 Embedding 10x784 + Conv(2->16, 4) + GN(16) = 7840 + 528 + 32
#   D2 Conv(16->32, 4) + GN(32)    = 8224 + 64            D3 Conv(32->32, 3) + GN  = 9312
#   D4 Conv(32->64, 4) + GN(64)    = 32832 + 128          D5 Linear(576 -> 1)      = 577
G = {1: 348324, 2: 32864, 3: 9312, 4: 8240, 5: 145}
D = {1: 8400, 2: 8288, 3: 9312, 4: 32960, 5: 577}
# Floats per example leaving each block: G1 64x7x7, G2 and G3 32x14x14, G4 16x28x28;
# D1 16x14x14, D2 and D3 32x7x7, D4 64x3x3.
G_OUT = {1: 3136, 2: 6272, 3: 6272, 4: 12544}
D_OUT = {1: 3136, 2: 1568, 3: 1568, 4: 576}

# Per client: its blocks, and (head output, server output) of each network.
OWN = {
    0: G[1] + G[2] + G[5] + D[1] + D[4] + D[5],
    1: G[1] + G[5] + D[1] + D[5],
    2: G[1] + G[4] + G[5] + D[1] + D[2] + D[5],
}
CUT_G = {0: (G_OUT[2], G_OUT[4]), 1: (G_OUT[1], G_OUT[4]), 2: (G_OUT[1], G_OUT[3])}
CUT_D = {0: (D_OUT[1], D_OUT[3]), 1: (D_OUT[1], D_OUT[4]), 2: (D_OUT[2], D_OUT[4])}


@pytest.fixture(scope="module")
def clients(mnist_dir):
    torch.set_num_threads(1)
    data = make_federated_data(
        ["mnist"], 3, ClassDropPartitioner("iid", 48), seed=0, data_dir=mnist_dir
    )
    return {c.client_id: c for c in data.clients}


def run_round(clients, backend, compute_dtype="float32"):
    params = HuscfGanParams(architecture="light", batch_size=BATCH, compute_dtype=compute_dtype)
    task = HuscfGan(params, 10, (1, 28, 28), 1)
    plan = RoundPlan(0, [ClientInstruction(c, 100 + c, {}) for c in sorted(clients)])
    work = LocalWork(task, task.federated_state(), [], STEPS, None, 0)
    return {r.client_id: r for r in backend.run(plan, work, clients, {})}


def test_hand_counted_bytes_per_client_of_a_split_round(clients):
    # Prepare: per iteration each network crosses the cut as activation up, activation
    # down, gradient up (tail input's shape), gradient down (head output's shape);
    # the generator once, the discriminator three times (fakes, reals, generator step).
    expected = {}
    for c in clients:
        b = min(BATCH, clients[c].num_examples)
        per_iteration = sum(CUT_G[c]) + 3 * sum(CUT_D[c])  # floats per example, each way
        wire = FLOAT * b * per_iteration * STEPS
        expected[c] = (wire + FLOAT * OWN[c], wire + FLOAT * OWN[c])  # (up, down)
    # Execute
    results = run_round(clients, SplitBackend(cuts=CUTS))
    # Assert: not the whole model (1,196,622 bytes of light G and D) per client.
    assert all(r.ok for r in results.values())
    for c, (up, down) in expected.items():
        assert (results[c].bytes_up, results[c].bytes_down) == (up, down), c


def test_bfloat16_compute_halves_the_cut_traffic_but_not_the_blocks(clients):
    # Prepare: under compute_dtype bfloat16 every activation and gradient that crosses a
    # cut is a bfloat16 tensor (2 bytes), while the blocks stay float32 weights.
    expected = {}
    for c in clients:
        b = min(BATCH, clients[c].num_examples)
        wire = 2 * b * (sum(CUT_G[c]) + 3 * sum(CUT_D[c])) * STEPS
        expected[c] = (wire + FLOAT * OWN[c], wire + FLOAT * OWN[c])
    # Execute
    backend = SplitBackend(cuts=CUTS)
    results = run_round(clients, backend, compute_dtype="bfloat16")
    # Assert
    assert all(r.ok for r in results.values())
    for c, (up, down) in expected.items():
        assert (results[c].bytes_up, results[c].bytes_down) == (up, down), c
    # The cut plan (the analytic latency and the cut search) costs what crosses: 2 bytes
    # an activation, a batch of BATCH, at each block's output.
    assert backend.plan is not None
    g_out = [2 * BATCH * G_OUT[i] for i in (1, 2, 3, 4)]
    d_out = [2 * BATCH * D_OUT[i] for i in (1, 2, 3, 4)]
    assert list(backend.plan.generator_costs.output_bytes[:4]) == g_out
    assert list(backend.plan.discriminator_costs.output_bytes[:4]) == d_out


def test_a_client_that_drops_out_reports_what_crossed_before(clients):
    # Prepare: client 1 leaves after 5 messages: G activation up, G activation down,
    # D (fakes) activation up, D activation down, D gradient up; the gradient down
    # (6th) never arrives. It uploads no update.
    b = min(BATCH, clients[1].num_examples)
    up = FLOAT * b * (G_OUT[1] + D_OUT[1] + D_OUT[4])
    down = FLOAT * OWN[1] + FLOAT * b * (G_OUT[4] + D_OUT[4])
    # Execute
    results = run_round(clients, SplitBackend(cuts=CUTS, drop_after={1: 5}))
    # Assert
    assert not results[1].ok
    assert (results[1].bytes_up, results[1].bytes_down) == (up, down)
    assert results[0].ok and results[2].ok
