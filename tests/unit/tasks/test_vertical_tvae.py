"""The vertically split TVAE on real columns of fair: exactly TVAE's iteration, no raw
column in any encoded message, bytes equal to the encoded lengths, resume bit-identical,
clear errors for bad setups."""

from __future__ import annotations

import json

import pytest
import torch
from resume_support import uninterrupted_and_resumed
from vertical_support import NUMERIC, found, raw_patterns

from fedgen.config import load_config
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.params import validate_params
from fedgen.tasks.tabular import TvaeTask
from fedgen.tasks.tabular.tvae_functional import SIGMA_RANGE
from fedgen.tasks.tabular.vertical_channel import SERVER, WireChannel, party
from fedgen.tasks.tabular.vertical_training import JointSeeds
from fedgen.tasks.tabular.vertical_tvae import (
    DECODER_BODY,
    ENCODER_TOP,
    VerticalTvaeTask,
    decoder_head_name,
    encoder_bottom_name,
)
from fedgen.tasks.tabular.vertical_tvae_training import VerticalTvaeTrainer
from fedgen.wire import decode, encode

SPLIT = [
    ["rate_marriage", "age", "yrs_married", "children"],
    ["religious", "educ", "occupation", "occupation_husb", "had_affair"],
]


def tiny(groups=SPLIT, **sets: object):
    values = {
        "data.num_clients": len(groups),
        "data.partition.params": json.dumps({"columns": groups, "max_modes": 2}),
        "task.params": "{batch_size: 100, hidden: 32, latent_dim: 16}",
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
        "configs/tabular_fair_vertical_tvae.yaml", [f"{k}={v}" for k, v in values.items()]
    )


@pytest.fixture(scope="module")
def one_round():
    exp = build_experiment(tiny())
    record = exp.federation.run_round(0)
    return exp, record


def joined_tvae(vertical) -> TvaeTask:
    """A ``TvaeTask`` over the joined row holding the vertical parties' weights: each
    share of the encoder's first layer in its columns, their biases summed, each head's
    output rows and standard deviations at its columns."""
    tvae = TvaeTask(TvaeTask.Params(**vertical.params.model_dump()), vertical.encoder, 0)
    enc, dec = tvae.modules["encoder"], tvae.modules["decoder"]
    top, body = vertical.modules[ENCODER_TOP], vertical.modules[DECODER_BODY]
    with torch.no_grad():
        first = enc.net[0]
        first.bias.zero_()
        for i, at in enumerate(vertical.positions):
            share = vertical.modules[encoder_bottom_name(i)]
            first.weight[:, at] = share.weight
            if share.bias is not None:
                first.bias += share.bias
            head = vertical.modules[decoder_head_name(i)]
            dec.out.weight[at] = head.out.weight
            dec.out.bias[at] = head.out.bias
            dec.sigma[at] = head.sigma
        enc.net[2].load_state_dict(top.net[1].state_dict())
        enc.mu.load_state_dict(top.mu.state_dict())
        enc.logvar.load_state_dict(top.logvar.state_dict())
        dec.net.load_state_dict(body.net.state_dict())
    return tvae


THREE = [  # a client holding only numeric columns, one mixed, one only categorical
    ["age", "yrs_married", "children"],
    ["rate_marriage", "religious", "educ"],
    ["occupation", "occupation_husb", "had_affair"],
]


@pytest.mark.parametrize(
    "groups", [[SPLIT[0] + SPLIT[1]], SPLIT, THREE], ids=["one", "two", "three"]
)
def test_the_split_iteration_is_tvaes_own(groups):
    # Prepare: the vertical task and the TVAE with the same weights over the joined row.
    exp = build_experiment(tiny(groups, **{"federation.rounds": 1}))
    task, p = exp.task, exp.task.params
    clients = exp.data.clients
    seeds = JointSeeds(1, 2, tuple(range(3, 3 + len(groups))))
    trainer = VerticalTvaeTrainer(task, clients, seeds, WireChannel(), 1e-3)
    tvae = joined_tvae(task)
    opt = torch.optim.Adam(
        [*tvae.modules["encoder"].parameters(), *tvae.modules["decoder"].parameters()],
        lr=1e-3,
        weight_decay=p.weight_decay,
    )
    noise = torch.Generator().manual_seed(5)
    for _ in range(4):
        records = trainer.next_records()
        eps = torch.randn((len(records), p.latent_dim), generator=noise)
        joined_rows = torch.zeros(len(records), task.encoder.dim)
        for c, at in zip(clients, task.positions, strict=True):
            joined_rows[:, at] = c.encoded[records]
        # Execute: one step across the wire, one step of TVAE's loss on the joined row.
        recon, kl = trainer.step(records, eps)
        want_recon, want_kl = tvae.loss(joined_rows, eps)
        opt.zero_grad()
        (p.loss_factor * want_recon + want_kl).backward()
        opt.step()
        with torch.no_grad():
            tvae.modules["decoder"].sigma.clamp_(*SIGMA_RANGE)
        assert recon == pytest.approx(float(want_recon.detach()), rel=1e-5)
        assert kl == pytest.approx(float(want_kl.detach()), rel=1e-5)
    # Assert: after four steps the parties' weights are still TVAE's (Adam included).
    again = joined_tvae(task)
    for name in ("encoder", "decoder"):
        for (k, v), w in zip(
            tvae.modules[name].state_dict().items(),
            again.modules[name].state_dict().values(),
            strict=True,
        ):
            assert torch.allclose(v, w, rtol=1e-4, atol=1e-6), f"{name}.{k}"


def test_no_raw_column_crosses_the_wire(one_round):
    exp, _ = one_round
    log = [data for _, _, data in exp.federation.backend.channel.log]
    patterns = raw_patterns(exp)
    assert len(log) > 10
    assert [found(log, p) for p in patterns] == [0] * len(patterns)
    # ...while the same search finds them the moment a client sends its rows.
    leak = WireChannel(record=True)
    rows = exp.data.clients[0]
    leak.one(party(0), SERVER, "real", rows.encoded[:5])
    leak.one(party(0), SERVER, "raw", torch.from_numpy(rows.rows[NUMERIC].to_numpy()[7:9]))
    leaked = [data for _, _, data in leak.log]
    assert found(leaked, patterns[0]) >= 5 and found(leaked, patterns[3]) >= 2


def test_bytes_are_the_encoded_lengths_and_only_the_server_is_talked_to(one_round):
    exp, record = one_round
    log = exp.federation.backend.channel.log
    assert all(encode(decode(data)) == data for _, _, data in log)
    assert record.metrics["bytes_up"] == sum(len(d) for s, _, d in log if s != SERVER)
    assert record.metrics["bytes_down"] == sum(len(d) for _, r, d in log if r != SERVER)
    # No record ids: the clients draw the batches from a seed they share.
    assert all(SERVER in (s, r) for s, r, _ in log)


def test_each_client_keeps_only_its_own_parts(one_round):
    exp, _ = one_round
    task, fed = exp.task, exp.federation
    assert set(fed.global_state) == set(task.federated_state())
    assert all(k.startswith((ENCODER_TOP + ".", DECODER_BODY + ".")) for k in fed.global_state)
    for cid, private in fed.private_states.items():
        assert sorted(private) == sorted(task.party_keys(cid))
    # Only client 0's share of the encoder's first layer has a bias, as the joint layer.
    assert [k for k in task.party_keys(1) if k.endswith("bias")] == [
        f"{decoder_head_name(1)}.out.bias"
    ]


def test_a_resumed_vertical_tvae_run_ends_bit_identical(tmp_path):
    cfg = tiny()
    ref, second = uninterrupted_and_resumed(cfg, tmp_path)
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), k
    for cid, private in ref.private_states.items():
        assert all(torch.equal(v, second.private_states[cid][k]) for k, v in private.items())
    gen = [torch.Generator().manual_seed(1) for _ in range(2)]
    a = ref.load_global_into_task().sample(50, gen[0])
    b = second.load_global_into_task().sample(50, gen[1])
    assert a.equals(b) and list(a.columns) == [c.name for c in ref.task.encoder.schema.columns]


def test_the_vertical_tvae_parts_go_together():
    with pytest.raises(ConfigError, match="backend vertical"):
        build_experiment(tiny(**{"backend.name": "inprocess", "backend.params": "{}"}))
    with pytest.raises(ConfigError, match="vertical_tvae"):
        build_experiment(tiny(**{"task.name": "tvae"}))
    with pytest.raises(ConfigError, match="keep_optimizer"):
        build_experiment(tiny(**{"task.params": "{batch_size: 100, keep_optimizer: true}"}))
    with pytest.raises(ConfigError, match="local_optimizer sgd"):
        build_experiment(tiny(**{"task.params": "{batch_size: 100, local_optimizer: sgd}"}))
    with pytest.raises(ConfigError, match="compute_dtype bfloat16"):
        build_experiment(tiny(**{"task.params": "{batch_size: 100, compute_dtype: bfloat16}"}))
    with pytest.raises(ConfigError, match="drop transforms and faults"):
        clipped = tiny(**{"transforms": "[{name: clip, params: {max_norm: 1.0}}]"})
        build_experiment(clipped).federation.run_round(0)


def test_vertical_tvae_refuses_condition_on_rather_than_ignore_it():
    # Inherited from TVAE's params but never built: it would train an unconditional model.
    with pytest.raises(ConfigError, match="condition_on is not built for vertical_tvae"):
        validate_params(VerticalTvaeTask, {"condition_on": "had_affair"}, "task.params")


def test_the_clients_shared_draws_are_keyed_by_the_runs_secret():
    # The server issues the round seeds; the clients' shared seed (record order) must
    # not follow from them, or the server could link each share to a record.
    from fedgen.engine.backends.vertical import clients_seed
    from fedgen.seeding import derive_seed

    key_a, key_b = b"a" * 32, b"b" * 32
    assert clients_seed(None, 7) == derive_seed(7, "vertical", "clients") % 2**63
    assert len({clients_seed(None, 7), clients_seed(key_a, 7), clients_seed(key_b, 7)}) == 3
    assert clients_seed(key_a, 7) == clients_seed(key_a, 7) != clients_seed(key_a, 8)
    # Two fresh runs of one config with secret keys train on different record orders;
    # root-seeded runs repeat exactly.
    for noise_seed, same in (("secret", False), ("root", True)):
        a, b = (
            build_experiment(tiny(**{"federation.rounds": 1, "noise_seed": noise_seed}))
            for _ in range(2)
        )
        assert a.federation.run() and b.federation.run()
        state_a, state_b = a.federation.global_state, b.federation.global_state
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a) == same
