"""The vertically split CTGAN on real columns of fair: no raw column in any encoded message,
bytes equal to the encoded lengths, resume bit-identical, clear errors for bad setups."""

from __future__ import annotations

import json

import pytest
import torch
from resume_support import uninterrupted_and_resumed
from vertical_support import NUMERIC, found, raw_patterns

from fedgen.config import load_config
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, restore_latest
from fedgen.tasks.tabular import CtganTask
from fedgen.tasks.tabular.vertical_channel import SERVER, WireChannel, party
from fedgen.tasks.tabular.vertical_ctgan import TOP, bottom_name
from fedgen.tasks.tabular.vertical_training import JointSeeds, VerticalTrainer
from fedgen.wire import decode, encode

SPLIT = [
    ["rate_marriage", "age", "yrs_married", "children"],
    ["religious", "educ", "occupation", "occupation_husb", "had_affair"],
]


def tiny(groups=SPLIT, **sets: object):
    values = {
        "data.num_clients": len(groups),
        "data.partition.params": json.dumps({"columns": groups, "max_modes": 2}),
        "task.params": "{batch_size: 100, pac: 10, hidden: 32, noise_dim: 16}",
        "backend.params": "{record: true}",
        "federation.rounds": 3,
        "federation.local_steps": 2,
        "eval.every": 0,
        "eval.final": False,
        "threads": 1,
        # Reruns from the config alone are identical (the resume tests compare two runs).
        "noise_seed": "root",
        **sets,
    }
    return load_config(
        "configs/tabular_fair_vertical.yaml", [f"{k}={v}" for k, v in values.items()]
    )


@pytest.fixture(scope="module")
def one_round():
    exp = build_experiment(tiny())
    record = exp.federation.run_round(0)
    return exp, record


def test_no_raw_column_crosses_the_wire(one_round):
    # Prepare
    exp, _ = one_round
    log = [data for _, _, data in exp.federation.backend.channel.log]
    patterns = raw_patterns(exp)
    # Execute / Assert: no record's encoded block nor raw numeric values in any message.
    assert len(log) > 20
    assert [found(log, p) for p in patterns] == [0] * len(patterns)
    # ...while the same search finds them the moment a client sends its rows.
    leak = WireChannel(record=True)
    rows = exp.data.clients[0]
    leak.one(party(0), SERVER, "real", rows.encoded[:5])
    leak.one(party(0), SERVER, "raw", torch.from_numpy(rows.rows[NUMERIC].to_numpy()[7:9]))
    leaked = [data for _, _, data in leak.log]
    assert found(leaked, patterns[0]) >= 5 and found(leaked, patterns[3]) >= 2


def test_bytes_are_the_encoded_lengths_of_the_messages(one_round):
    exp, record = one_round
    log = exp.federation.backend.channel.log
    # Every message is one canonical wire encoding.
    assert all(encode(decode(data)) == data for _, _, data in log)
    sent_by_clients = sum(len(d) for s, _, d in log if s != SERVER)
    received_by_clients = sum(len(d) for _, r, d in log if r != SERVER)
    assert record.metrics["bytes_up"] == sent_by_clients
    assert record.metrics["bytes_down"] == received_by_clients
    # Record ids travel between the clients only; the server gets no int64 array.
    ints = [
        (s, r)
        for s, r, d in log
        if decode(d).arrays and next(iter(decode(d).arrays.values())).dtype == torch.int64
    ]
    assert ints and all(SERVER not in pair for pair in ints)


def test_a_resumed_vertical_run_ends_bit_identical(tmp_path):
    # Prepare / Execute: an uninterrupted run, and one stopped in round 2 and resumed.
    cfg = tiny()
    ref, second = uninterrupted_and_resumed(cfg, tmp_path)
    # Assert: the server's parts, every client's own parts, the bytes, and what evaluation
    # samples (which loads every client's parts) are those of the uninterrupted run.
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), k
    assert ref.private_states.keys() == second.private_states.keys() == {0, 1}
    for cid, private in ref.private_states.items():
        assert all(torch.equal(v, second.private_states[cid][k]) for k, v in private.items())
    assert [m["bytes_up"] for m in second.history] == [m["bytes_up"] for m in ref.history]
    fresh = build_experiment(cfg).federation
    restore_latest(fresh, tmp_path, cfg)
    gen = [torch.Generator().manual_seed(1) for _ in range(2)]
    a = ref.load_global_into_task().sample(50, gen[0])
    b = fresh.load_global_into_task().sample(50, gen[1])
    assert a.equals(b)


def test_each_client_keeps_only_its_own_parts(one_round):
    exp, _ = one_round
    task, fed = exp.task, exp.federation
    assert set(fed.global_state) == set(task.federated_state())
    assert all(k.startswith(("generator_body.", "critic_top.")) for k in fed.global_state)
    for cid, private in fed.private_states.items():
        assert sorted(private) == sorted(task.party_keys(cid))


def test_one_owner_of_every_column_is_ctgans_own_architecture(one_round):
    exp = build_experiment(tiny([SPLIT[0] + SPLIT[1]], **{"federation.rounds": 1}))
    task = exp.task
    ctgan = CtganTask(CtganTask.Params(**task.params.model_dump()), task.encoder, 0)
    shapes = sorted(v.shape for m in task.modules.values() for v in m.parameters())
    assert shapes == sorted(v.shape for m in ctgan.modules.values() for v in m.parameters())


def test_the_vertical_parts_go_together():
    with pytest.raises(ConfigError, match="backend vertical"):
        build_experiment(tiny(**{"backend.name": "inprocess", "backend.params": "{}"}))
    with pytest.raises(ConfigError, match="table_vertical"):
        build_experiment(tiny(**{"task.name": "ctgan"}))
    with pytest.raises(ConfigError, match="local_optimizer sgd"):
        build_experiment(tiny(**{"task.params": "{batch_size: 100, local_optimizer: sgd}"}))
    with pytest.raises(ConfigError, match="compute_dtype bfloat16"):
        build_experiment(tiny(**{"task.params": "{batch_size: 100, compute_dtype: bfloat16}"}))
    with pytest.raises(ConfigError, match="every client in every round"):
        fed = build_experiment(tiny(**{"strategy.params": "{fraction: 0.5, min_clients: 1}"}))
        fed.federation.run_round(0)
    with pytest.raises(ConfigError, match="drop transforms and faults"):
        clipped = tiny(**{"transforms": "[{name: clip, params: {max_norm: 1.0}}]"})
        build_experiment(clipped).federation.run_round(0)


def test_the_split_critic_gradients_are_the_joined_critics():
    # Prepare: a critic step's inputs, the top without dropout (the same network both ways).
    exp = build_experiment(tiny(**{"federation.rounds": 1}))
    task, p = exp.task, exp.task.params
    trainer = VerticalTrainer(task, exp.data.clients, JointSeeds(1, 2, (3, 4)), WireChannel(), 1e-3)
    task.modules[TOP].eval()
    inputs = trainer.critic_inputs()
    # Execute: across the wire, then by the CTGAN formulas on the joined critic.
    loss = trainer.critic_gradients(inputs)
    split = {
        f"{n}.{k}": v.grad.clone()
        for n, m in task.modules.items()
        for k, v in m.named_parameters()
        if v.grad is not None
    }
    for m in task.modules.values():
        m.zero_grad(set_to_none=True)
    bottoms = [task.modules[bottom_name(i)] for i in range(2)]

    def critic(xs):
        return task.modules[TOP]([b(x) for b, x in zip(bottoms, xs, strict=True)])

    real, fake = [x[0] for x in inputs], [x[1] for x in inputs]
    mixed = [x[2].detach().requires_grad_(True) for x in inputs]
    joined_loss = critic(fake).mean() - critic(real).mean()
    grads = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    packs = torch.cat([g.reshape(p.batch_size // p.pac, -1) for g in grads], dim=1)
    penalty = ((packs.norm(2, dim=1) - 1) ** 2).mean() * p.gp_weight
    (joined_loss + penalty).backward()
    # Assert: the same loss and the same gradient in every block of the critic.
    assert loss == pytest.approx(float(joined_loss.detach()), abs=1e-6)
    joined = {
        f"{n}.{k}": v.grad
        for n, m in task.modules.items()
        for k, v in m.named_parameters()
        if v.grad is not None
    }
    assert split.keys() == joined.keys() and any(k.startswith("critic_bottom_1") for k in split)
    for k, v in joined.items():
        assert torch.allclose(split[k], v, rtol=1e-4, atol=1e-6), k


def test_the_critic_shares_start_as_slices_of_ctgans_first_layer():
    # Each share drawn with its own fan-in would start the summed layer about sqrt(K)
    # larger than CTGAN's; drawn with the joint fan-in, it starts as CTGAN's does.
    task = build_experiment(tiny(**{"federation.rounds": 1})).task
    shares = [task.modules[bottom_name(i)].fc for i in range(task.num_parties)]
    fan_in = sum(share.in_features for share in shares)
    bound = 1 / fan_in**0.5
    weights = torch.cat([share.weight.flatten() for share in shares])
    assert float(weights.abs().max()) <= bound
    # i.i.d. uniform on [-bound, bound]: standard deviation bound / sqrt(3)
    assert float(weights.std()) == pytest.approx(bound / 3**0.5, rel=0.05)
    assert float(shares[0].bias.abs().max()) > 0
    assert all(share.bias is None for share in shares[1:])
