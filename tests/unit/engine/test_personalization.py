"""Personal models: FedPer's personal layers, Ditto's personal step, which model a client
evaluates with, and the settings refused before round 1."""

from __future__ import annotations

import pytest
import torch
from tiny_federation import tiny_config
from torch import nn

from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.engine.backends.local_training import reply_message, run_client
from fedgen.engine.callbacks import CheckpointCallback
from fedgen.engine.client_models import (
    evaluated_client,
    has_personal_models,
    load_client_model,
    load_evaluated_model,
)
from fedgen.engine.ditto import PERSONAL_PREFIX, train_personal
from fedgen.errors import ConfigError
from fedgen.eval.per_client import real_images_for_labels
from fedgen.experiment import build_experiment, restore_latest
from fedgen.modality import TensorKind
from fedgen.params import ParamsError
from fedgen.tasks.base import Task, TaskParams
from fedgen.types import ClientInstruction

FEDPER = (
    "{batch_size: 16, generator_width: 8, discriminator_width: 8, "
    "personal: [generator.embed, generator.body.5, discriminator.embed, discriminator.head]}"
)
DITTO = "{min_clients: 2, lam: 0.5}"


def test_personal_layers_are_private_and_never_in_the_reply(mnist_dir):
    # Prepare: the tiny cGAN with FedPer's personal layers.
    fed = build_experiment(tiny_config(mnist_dir, **{"task.params": FEDPER})).federation
    task = fed.task
    # Assert: the class embeddings and output layers are private, the bodies federated.
    assert task.tensor_kind("generator", "embed.weight") == TensorKind.PRIVATE
    assert task.tensor_kind("generator", "body.5.bias") == TensorKind.PRIVATE
    assert task.tensor_kind("discriminator", "head.weight") == TensorKind.PRIVATE
    assert task.tensor_kind("generator", "body.2.weight") == TensorKind.FEDERATED
    assert task.tensor_kind("generator", "project.weight") == TensorKind.FEDERATED
    private = set(task.initial_private_state())
    assert private == {
        "generator.embed.weight",
        "generator.body.5.weight",
        "generator.body.5.bias",
        "discriminator.embed.weight",
        "discriminator.head.weight",
        "discriminator.head.bias",
    }
    assert not private & set(fed.global_state)
    # Execute: one client's round, as every backend runs it.
    plan = fed.strategy.configure(0, sorted(fed.clients), __import__("numpy").random.default_rng(0))
    ins = plan.instructions[0]
    result, kept = run_client(
        ins, fed.local_work(fed.global_state, 0), fed.clients[ins.client_id], None, 4
    )
    # Assert: the reply carries the federated tensors only; the client keeps the rest.
    assert result.update is not None and set(result.update) == set(fed.global_state)
    assert not any(name.split("/", 1)[1] in private for name in reply_message(result).arrays)
    assert set(kept) == private
    assert not torch.equal(
        kept["discriminator.head.weight"], task.initial_private_state()["discriminator.head.weight"]
    )


@pytest.mark.parametrize(
    ("personal", "match"),
    [
        ("[generator.embedding]", "generator.embedding.*no tensor of ConditionalGan"),
        ("[generator, discriminator]", "nothing is federated"),
    ],
)
def test_personal_layers_the_task_lacks_are_refused(mnist_dir, personal, match):
    params = f"{{batch_size: 16, generator_width: 8, discriminator_width: 8, personal: {personal}}}"
    with pytest.raises(ConfigError, match=match):
        build_experiment(tiny_config(mnist_dir, **{"task.params": params}))


class FrozenBase(Task):
    """A frozen 784->4 projection under a federated head."""

    def build(self) -> dict[str, nn.Module]:
        return {"base": nn.Linear(784, 4), "head": nn.Linear(4, self.num_classes)}

    def declared_kind(self, module: str, key: str) -> TensorKind:
        return TensorKind.FROZEN if module == "base" else TensorKind.FEDERATED

    def train_local(self, data, steps, generator, config):
        return {}

    def sample(self, condition, generator):
        raise NotImplementedError


def test_the_cvaes_personal_layers():
    from fedgen.tasks.vae import ConditionalVae, VaeParams

    params = VaeParams(width=8, personal=["decoder.project", "decoder.body.5", "encoder.to_stats"])
    task = ConditionalVae(params, 10, (1, 28, 28), 0)
    assert set(task.initial_private_state()) == {
        "decoder.project.weight",
        "decoder.project.bias",
        "decoder.body.5.weight",
        "decoder.body.5.bias",
        "encoder.to_stats.weight",
        "encoder.to_stats.bias",
    }
    assert "decoder.body.2.weight" in task.federated_state()
    assert "encoder.features.0.weight" in task.federated_state()


def test_a_frozen_tensor_cannot_be_personal():
    with pytest.raises(ValueError, match="frozen base"):
        FrozenBase(TaskParams(personal=["base.weight"]), 10, (1, 28, 28), 0)
    task = FrozenBase(TaskParams(personal=["head.bias"]), 10, (1, 28, 28), 0)
    assert set(task.initial_private_state()) == {"head.bias"}
    assert set(task.federated_state()) == {"head.weight"}


def test_ditto_keeps_fedavgs_global_model_and_a_personal_model_per_client(mnist_dir):
    # Prepare: two rounds of the tiny federation as FedAvg and as Ditto.
    plain = build_experiment(tiny_config(mnist_dir, **{"federation.rounds": 2})).federation
    ditto = build_experiment(
        tiny_config(
            mnist_dir,
            **{"federation.rounds": 2, "strategy.name": "ditto", "strategy.params": DITTO},
        )
    ).federation
    # Execute
    assert plain.run() and ditto.run()
    # Assert: Ditto's server side and the clients' global step are FedAvg's, bit for bit.
    for k in plain.global_state:
        assert torch.equal(plain.global_state[k], ditto.global_state[k]), k
    # Every client kept a whole personal model of its own, apart from the global one.
    assert has_personal_models(ditto) and not has_personal_models(plain)
    for cid, own in ditto.private_states.items():
        assert set(own) == {PERSONAL_PREFIX + k for k in ditto.global_state}, cid
        moved = [
            k
            for k in ditto.global_state
            if not torch.equal(own[PERSONAL_PREFIX + k], ditto.global_state[k])
        ]
        assert moved, cid
    # A client's own model is its personal one; the global model is the global state.
    load_client_model(ditto, 0)
    assert torch.equal(
        ditto.task.federated_state()["generator.project.weight"],
        ditto.private_states[0][PERSONAL_PREFIX + "generator.project.weight"],
    )
    ditto.load_global_into_task()
    assert torch.equal(
        ditto.task.federated_state()["generator.project.weight"],
        ditto.strategy.evaluation_state(ditto.global_state)["generator.project.weight"],
    )


class Linear(Task):
    """A linear regressor on flattened images, one SGD step of lr 0.1 on the mean of the
    outputs per call: gradient of ``mean(w . x + b)`` is ``(mean x, 1)``."""

    def build(self) -> dict[str, nn.Module]:
        return {"net": nn.Linear(784, 1)}

    def train_local(self, data, steps, generator, config):
        net = self.modules["net"]
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        x = data.data.float_images().flatten(1)
        for _ in range(steps):
            opt.zero_grad()
            net(x).mean().backward()
            opt.step()
        return {"loss": 0.0}

    def sample(self, condition, generator):
        raise NotImplementedError


def test_the_personal_step_by_hand():
    # Prepare: a client of 3 images; global w, a personal v from an earlier round.
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(3, 1, 28, 28, generator=gen) * 255).to(torch.uint8)
    data = ClientData(0, ImageDataset("t", images, torch.zeros(3, dtype=torch.int64), ("a",)))
    task = Linear(TaskParams(), 1, (1, 28, 28), 0)
    w = {k: torch.randn(v.shape, generator=gen) for k, v in task.federated_state().items()}
    v = {k: torch.randn(t.shape, generator=gen) for k, t in w.items()}
    carried = {PERSONAL_PREFIX + k: t.clone() for k, t in v.items()}
    lam = 0.5
    ins = ClientInstruction(0, 7, {"ditto_lambda": lam, "ditto_steps": 1})
    # Execute: one personal step.
    losses = train_personal(task, data, w, carried, {}, lam, 1, ins)
    # Assert: v - lr * (grad F(v) + lam (v - w)), grad F = (mean x, 1).
    mean_x = images.float().div(255).flatten(1).mean(0, keepdim=True)
    expected_w = v["net.weight"] - 0.1 * (mean_x + lam * (v["net.weight"] - w["net.weight"]))
    expected_b = v["net.bias"] - 0.1 * (1 + lam * (v["net.bias"] - w["net.bias"]))
    assert torch.allclose(carried[PERSONAL_PREFIX + "net.weight"], expected_w, atol=1e-6)
    assert torch.allclose(carried[PERSONAL_PREFIX + "net.bias"], expected_b, atol=1e-6)
    assert losses == {"personal/loss": 0.0}
    # A first Ditto round starts the personal model from the global one.
    fresh: dict[str, torch.Tensor] = {}
    train_personal(task, data, w, fresh, {}, lam, 1, ins)
    assert torch.allclose(
        fresh[PERSONAL_PREFIX + "net.bias"], w["net.bias"] - 0.1 * torch.ones(1), atol=1e-6
    )


def test_fedper_and_ditto_resume_bit_identically_with_personal_state(mnist_dir, tmp_path):
    # Prepare: FedPer layers and Ditto together, 2 rounds; stopped in round 1, resumed.
    cfg = tiny_config(
        mnist_dir,
        **{
            "federation.rounds": 2,
            "task.params": FEDPER,
            "strategy.name": "ditto",
            "strategy.params": DITTO,
        },
    )
    ref = build_experiment(cfg).federation
    assert ref.run()
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    original, calls = first.task.train_local, [0]

    def train_local(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2 * 4 + 3:  # round 1, second client's global step
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    first.task.train_local = train_local  # type: ignore[method-assign]
    assert first.run() is False
    # Execute
    second = build_experiment(cfg).federation
    assert restore_latest(second, tmp_path, cfg) == 0
    assert second.run()
    # Assert: global state and every client's private tensors and personal model.
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), k
    for cid, own in ref.private_states.items():
        assert own.keys() == second.private_states[cid].keys()
        assert any(k.startswith(PERSONAL_PREFIX) for k in own)
        assert "generator.embed.weight" in own
        for k in own:
            assert torch.equal(own[k], second.private_states[cid][k]), (cid, k)


def test_the_global_model_holds_the_initial_private_tensors(mnist_dir):
    # Prepare: the discriminator private (a partial scheme, as FedDiffuse's blocks).
    params = "{batch_size: 16, generator_width: 8, discriminator_width: 8, federate: [generator]}"
    fed = build_experiment(
        tiny_config(mnist_dir, **{"federation.rounds": 1, "task.params": params})
    ).federation
    initial = fed.task.initial_private_state()
    assert fed.run()
    # The task instance last trained some client: its discriminator is that client's.
    # Execute / Assert: the global model is the federated tensors with the initial ones...
    fed.load_global_into_task()
    for k, v in initial.items():
        assert torch.equal(fed.task.private_state()[k], v), k
    # ...and each client's own model holds its own private tensors.
    for cid in (0, 3):
        load_client_model(fed, cid)
        for k, v in fed.private_states[cid].items():
            assert torch.equal(fed.task.private_state()[k], v), (cid, k)


def test_ditto_composes_with_secure_aggregation(mnist_dir):
    clip, secagg = "{name: clip, params: {max_norm: 1.0}}", "{name: secagg, params: {}}"
    fed = build_experiment(
        tiny_config(
            mnist_dir,
            **{
                "federation.rounds": 1,
                "strategy.name": "ditto",
                "strategy.params": DITTO,
                "transforms": f"[{clip}, {secagg}]",
            },
        )
    ).federation
    before = {k: v.clone() for k, v in fed.global_state.items()}
    metrics = fed.run_round(0).metrics
    assert metrics["secagg/survivors"] == 4
    assert any(not torch.equal(before[k], fed.global_state[k]) for k in before)
    assert all(any(k.startswith(PERSONAL_PREFIX) for k in p) for p in fed.private_states.values())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {
                "strategy.name": "ditto",
                "strategy.params": DITTO,
                "dpsgd": "{noise_multiplier: 1.0, max_grad_norm: 1.0}",
            },
            "Ditto's personal steps would run through DP-SGD",
        ),
        (
            {
                "eval.per_client": "true",
                "transforms": "[{name: clip, params: {max_norm: 1.0}}, "
                "{name: client_dp, params: {noise_multiplier: 1.0}}]",
            },
            "eval.per_client reads each client's label proportions",
        ),
    ],
)
def test_personalization_that_would_leak_past_dp_is_refused(mnist_dir, overrides, match):
    with pytest.raises((ConfigError, ParamsError), match=match):
        build_experiment(tiny_config(mnist_dir, **overrides))


def test_a_run_reports_per_client_figures_for_each_model(mnist_dir, tmp_path):
    # Prepare: one round of FedPer layers, a small evaluation, per-client on.
    from fedgen.experiment import run_experiment

    cfg = tiny_config(
        mnist_dir,
        **{
            "federation.rounds": 1,
            "task.params": FEDPER,
            "data.partition.kind": "dirichlet",
            "data.partition.params": "{alpha: 0.1}",
            "eval.every": 0,
            "eval.num_quality_samples": 50,
            "eval.tstr_samples": 50,
            "eval.tstr_epochs": 1,
            "eval.per_client": "true",
            "eval.per_client_samples": 40,
            "eval.personalize_steps": 1,
        },
    )
    # Execute
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    # Assert: every model's mean and worst decile, each described; worst <= mean for TSTR.
    for model in ("global", "personal", "finetuned", "real"):
        for figure in ("tstr_accuracy", "frechet_distance"):
            key = f"client_{figure}_{model}"
            assert summary[key] >= 0 and key in summary["descriptions"], key
            assert f"{key}_worst_decile" in summary["descriptions"], key
        tstr = f"client_tstr_accuracy_{model}"
        assert summary[f"{tstr}_worst_decile"] <= summary[tstr] <= 1
        fd = f"client_frechet_distance_{model}"
        assert summary[f"{fd}_worst_decile"] >= summary[fd]
    # Every client's own figures are in the evaluated round's metrics line.
    import json

    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    own = last["client_figures"]
    assert set(own) == {"global", "personal", "finetuned", "real"}
    assert set(own["global"]) == {"0", "1", "2", "3"}
    tstr = [own["global"][c]["tstr_accuracy"] for c in own["global"]]
    assert summary["client_tstr_accuracy_global"] == pytest.approx(sum(tstr) / 4)
    # eval.model auto: the global figures are of the largest client's own model.
    assert "6 private tensors" in summary["evaluated_model"]
    assert "the client with the most examples" in summary["evaluated_model"]


def test_the_ceiling_draws_real_images_of_each_requested_class():
    # Prepare: a pool whose every image of class c is filled with the value 10 * c + i, so
    # a drawn image names its class and which one it is.
    pool = [
        torch.full((n, 1, 2, 2), 0, dtype=torch.uint8)
        + (10 * c + torch.arange(n)).view(-1, 1, 1, 1)
        for c, n in enumerate([5, 3, 0])
    ]
    pool = [p.to(torch.uint8) for p in pool]
    labels = torch.tensor([1, 0, 0, 1, 0, 1])
    # Execute
    real = real_images_for_labels(pool, labels, torch.Generator().manual_seed(0))
    # Assert: each row is an image of its label's class, in [0, 1]; no image twice while
    # the class holds enough (class 1 holds 3, asked 3).
    values = (real[:, 0, 0, 0] * 255).round().long()
    assert torch.equal(values // 10, labels)
    assert len(set(values.tolist())) == 6
    # A class more often asked than held is drawn with replacement, not refused.
    more = real_images_for_labels(pool, torch.ones(7, dtype=torch.long), torch.Generator())
    assert torch.equal((more[:, 0, 0, 0] * 255).round().long() // 10, torch.ones(7).long())
    # A class no client holds cannot be drawn: a clear error, not an empty image.
    with pytest.raises(ValueError, match="no client holds an image of class 2"):
        real_images_for_labels(pool, torch.tensor([2]), torch.Generator())


def test_eval_model_shows_the_largest_clients_own_model_unless_told_or_under_dp(mnist_dir):
    # Prepare: a private discriminator (a partial scheme), clients of unequal sizes, all
    # training in the one round.
    params = "{batch_size: 16, generator_width: 8, discriminator_width: 8, federate: [generator]}"
    overrides = {
        "federation.rounds": 1,
        "task.params": params,
        "data.partition.kind": "dirichlet",
        "data.partition.params": "{alpha: 0.5, min_size: 20}",
        "strategy.params": "{fraction: 1.0, min_clients: 2}",
    }
    fed = build_experiment(tiny_config(mnist_dir, **overrides)).federation
    assert fed.run()
    sizes = {cid: fed.clients[cid].num_examples for cid in fed.private_states}
    assert len(sizes) == 4 and len(set(sizes.values())) > 1
    largest = max(sizes, key=lambda c: sizes[c])
    # Execute / Assert: auto and largest_client pick it and load its own discriminator...
    assert evaluated_client(fed, "auto") == evaluated_client(fed, "largest_client") == largest
    task, client = load_evaluated_model(fed, "auto")
    assert client == largest
    for k, v in fed.private_states[largest].items():
        assert torch.equal(task.private_state()[k], v), k
    # ...global loads the initial private tensors, as before.
    task, client = load_evaluated_model(fed, "global")
    assert client is None
    for k, v in task.initial_private_state().items():
        assert torch.equal(task.private_state()[k], v), k
    # Under DP, auto keeps the global model (one client's unnoised blocks are not released).
    dp = build_experiment(
        tiny_config(
            mnist_dir,
            **{
                **overrides,
                "task.params": "{batch_size: 32, generator_width: 8, discriminator_width: 8, "
                "federate: [generator], fake_labels: uniform}",
                "dpsgd": "{noise_multiplier: 1.0, max_grad_norm: 1.0}",
            },
        )
    ).federation
    assert dp.run() and dp.privacy is not None and dp.private_states
    assert evaluated_client(dp, "auto") is None
    # Without private tensors there is only the global model.
    plain = build_experiment(tiny_config(mnist_dir, **{"federation.rounds": 1})).federation
    assert plain.run() and evaluated_client(plain, "auto") is None
