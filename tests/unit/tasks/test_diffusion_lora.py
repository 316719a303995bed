"""Task ddpm on a pretrained UNet: whole fine-tuning, or LoRA adapters with the base frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.engine.backends.local_training import reply_message
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.modality import TensorKind
from fedgen.params import ParamsError, validate_params
from fedgen.tasks.diffusion import ConditionalDdpm, DdpmParams

pytest.importorskip("peft", reason="LoRA adapters need the lm extra: pip install -e '.[lm]'")

SMALL = {"width": 8, "timesteps": 20, "sampling_steps": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def base_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' UNet's tensors, as a ddpm task exports them, after a few real steps."""
    task = ConditionalDdpm(DdpmParams(**SMALL, lr=3e-3), 10, (1, 28, 28), seed=7)
    path = tmp_path_factory.mktemp("base") / "unet.pt"
    torch.save(task.federated_state(), path)
    return path


def lora_task(base_file: Path, **params: Any) -> ConditionalDdpm:
    p = DdpmParams(**{**SMALL, "base_weights": str(base_file), "lora_rank": 4, **params})
    return ConditionalDdpm(p, 10, (1, 28, 28), seed=0)


def squares() -> ClientData:
    """A client of 16 white squares, labelled 0-9 in turn."""
    images = torch.zeros(16, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 8:20, 8:20] = 255
    return ClientData(
        0, ImageDataset("squares", images, torch.arange(16) % 10, tuple("0123456789"))
    )


def test_only_adapters_and_the_class_embedding_are_federated_and_the_base_is_frozen(base_file):
    task = lora_task(base_file)
    whole = ConditionalDdpm(DdpmParams(**SMALL, base_weights=str(base_file)), 10, (1, 28, 28), 0)
    federated = task.federated_state()
    assert federated and all(
        ".lora_A." in k or ".lora_B." in k or k.startswith("unet.class_embed.") for k in federated
    )
    assert task.private_state() == {}
    # The base is the pretrained file, as loaded: frozen, and the rest of the UNet.
    saved = torch.load(base_file, weights_only=True)
    frozen = task.frozen_tensors()
    for key, value in saved.items():
        name = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        if key.startswith("unet.class_embed."):
            continue
        assert torch.equal(frozen.get(key, frozen.get(name)), value), key
    assert task.tensor_kind("unet", "mid.attn.qkv.base_layer.weight") == TensorKind.FROZEN
    # B starts at zero: before training the adapted UNet is the pretrained one.
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 11]), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(task.modules["unet"](x, t, y), whole.modules["unet"](x, t, y))
    # What travels is a few percent of the whole UNet (<= 5%, the bound, at width 8
    # the class embedding weighs more than at the recipe's width 16).
    numbers = sum(v.numel() for v in federated.values())
    assert numbers <= 0.08 * sum(v.numel() for v in whole.federated_state().values())


def test_fine_tuning_moves_adapters_and_never_the_base(base_file):
    task = lora_task(base_file, lr=1e-2)
    frozen = {k: v.clone() for k, v in task.frozen_tensors().items()}
    adapters = task.federated_state()
    task.train_local(squares(), 3, torch.Generator().manual_seed(0), {})
    assert all(torch.equal(frozen[k], v) for k, v in task.frozen_tensors().items())
    after = task.federated_state()
    assert all(not torch.equal(adapters[k], after[k]) for k in after if ".lora_B." in k)


def test_lora_on_the_convolutions_adapts_every_conv_and_starts_as_the_base(base_file):
    # Prepare: adapters on the Linear layers only, and on every convolution as well.
    linear, conv = lora_task(base_file), lora_task(base_file, lora_convolutions=True)
    # Execute
    convs = [n for n, m in conv.modules["unet"].named_modules() if isinstance(m, torch.nn.Conv2d)]
    adapted = {k.split(".lora_A.")[0] for k in conv.federated_state() if ".lora_A." in k}
    # Assert: every base convolution has an adapter (peft's A is itself a Conv2d), the
    # base stays frozen, and B at zero leaves the pretrained UNet's output unchanged.
    bases = [n.removesuffix(".base_layer") for n in convs if n.endswith(".base_layer")]
    assert bases and {f"unet.{n}" for n in bases} <= adapted
    assert all(
        conv.tensor_kind("unet", f"{n}.base_layer.weight") == TensorKind.FROZEN for n in bases
    )
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 11]), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(conv.modules["unet"](x, t, y), linear.modules["unet"](x, t, y))
    sizes = [sum(v.numel() for v in task.federated_state().values()) for task in (linear, conv)]
    assert sizes[0] < sizes[1]


def test_lora_with_biases_also_trains_and_sends_every_bias_and_group_norm_scale(base_file):
    # Prepare: adapters alone, and adapters with BitFit's biases and GroupNorm scales.
    plain, bitfit = lora_task(base_file), lora_task(base_file, lora_biases=True, lr=1e-2)
    unet = bitfit.modules["unet"]
    norms = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    extra = set(bitfit.federated_state()) - set(plain.federated_state())
    # Assert: every GroupNorm's scale and shift, every conv's bias, federated; the conv
    # weights stay frozen; still a few percent of the UNet.
    assert {f"unet.{n}.weight" for n in norms} | {f"unet.{n}.bias" for n in norms} <= extra
    assert "unet.mid.res1.conv1.bias" in extra
    assert all(k.endswith(".bias") or ".norm" in k for k in extra)
    assert bitfit.tensor_kind("unet", "mid.res1.conv1.weight") == TensorKind.FROZEN
    whole = sum(v.numel() for v in unet.state_dict().values() if v.is_floating_point())
    assert sum(v.numel() for v in bitfit.federated_state().values()) < 0.12 * whole
    # Execute: a few steps move them, and never the frozen base.
    frozen = {k: v.clone() for k, v in bitfit.frozen_tensors().items()}
    before = bitfit.federated_state()
    bitfit.train_local(squares(), 3, torch.Generator().manual_seed(0), {})
    after = bitfit.federated_state()
    assert all(torch.equal(frozen[k], v) for k, v in bitfit.frozen_tensors().items())
    assert not torch.equal(before["unet.mid.res1.conv1.bias"], after["unet.mid.res1.conv1.bias"])
    with pytest.raises(ParamsError, match="set lora_rank > 0"):
        validate_params(ConditionalDdpm, {"lora_biases": True}, "task.params")


def test_lora_without_a_base_and_a_base_of_another_shape_are_clear_errors(base_file, tmp_path):
    with pytest.raises(ParamsError, match="set base_weights to its file"):
        validate_params(ConditionalDdpm, {"lora_rank": 4}, "task.params")
    with pytest.raises(ConfigError, match=r"holds another UNet .* use the width"):
        lora_task(base_file, width=16)
    with pytest.raises(ConfigError, match=r"no file .*export a trained ddpm UNet"):
        lora_task(tmp_path / "missing.pt")


def test_a_lora_round_sends_adapters_only(base_file, mnist_dir):
    cfg = tiny_config(
        mnist_dir,
        **{
            "task.name": "ddpm",
            "task.params": "{width: 8, timesteps: 20, sampling_steps: 2, batch_size: 8, "
            f"lora_rank: 4, base_weights: {base_file}}}",
            "federation.rounds": 1,
            "data.num_clients": 2,
            "strategy.params": "{fraction: 1.0}",
        },
    )
    fed = build_experiment(cfg).federation
    results: list[Any] = []
    original = fed.backend.run

    def spy(*args: Any, **kwargs: Any) -> Any:
        for res in original(*args, **kwargs):
            results.append(res)
            yield res

    fed.backend.run = spy  # type: ignore[method-assign]
    assert fed.run()
    adapters = set(fed.task.federated_state())
    assert len(results) == 2
    for res in results:
        assert set(res.update) == adapters
        assert {name.split("/", 1)[-1] for name in reply_message(res).arrays} == adapters
    assert fed.state_dict()["frozen_digest"]  # the checkpoint names the base, not its tensors


def test_dp_sgd_trains_the_adapters_and_leaves_the_frozen_base_alone(base_file, mnist_dir):
    # Opacus computes per-example gradients through peft's adapter layers: the adapters
    # and the class embedding train under DP-SGD, the accountant spends, the base is as
    # loaded.
    cfg = tiny_config(
        mnist_dir,
        **{
            "task.name": "ddpm",
            "task.params": "{width: 8, timesteps: 20, sampling_steps: 2, batch_size: 32, "
            f"lora_rank: 4, base_weights: {base_file}}}",
            "federation.rounds": 1,
            "dpsgd": "{noise_multiplier: 1.0, max_grad_norm: 1.0}",
        },
    )
    fed = build_experiment(cfg).federation
    before = {k: v.clone() for k, v in fed.global_state.items()}
    frozen = {k: v.clone() for k, v in fed.task.frozen_tensors().items()}
    assert fed.run()
    assert fed.privacy is not None and fed.privacy.describe()["epsilon"] > 0
    # lora_B starts at zero and DP noise moves every coordinate of a trained tensor.
    assert all(not torch.equal(before[k], fed.global_state[k]) for k in before if ".lora_B." in k)
    assert all(torch.equal(v, fed.task.frozen_tensors()[k]) for k, v in frozen.items())


@pytest.mark.parametrize(
    "saved, says",
    [
        ([torch.zeros(1)], "holds a list, not a UNet's named tensors"),
        ("checkpoint", "is a fedgen checkpoint.*federation.init_from"),
    ],
)
def test_base_weights_of_another_kind_of_torch_file_are_refused_by_name(tmp_path, saved, says):
    from torch import nn

    from fedgen.engine.checkpoint import save_checkpoint
    from fedgen.tasks.unet_lora import load_unet_weights

    path = tmp_path / "w.pt"
    if saved == "checkpoint":  # a fedgen checkpoint file, as a run writes one
        save_checkpoint(path, {"format": 1, "federation": {"w": torch.zeros(1)}})
    else:
        torch.save(saved, path)
    with pytest.raises(ConfigError, match=f"task.params.base_weights: .*{says}"):
        load_unet_weights(nn.Linear(1, 1), str(path))
