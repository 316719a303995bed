"""A pretrained UNet as a frozen base, and LoRA adapters (peft) on its projection layers.

LoRA (Hu et al., ICLR 2022) keeps a base weight ``W`` frozen and learns ``W + (alpha / r)
B A``; ``peft``'s ``inject_adapter_in_model`` puts the adapters into any ``nn.Module``.
On the diffusion UNet they go on every ``Linear`` layer: the attention's ``qkv`` and
``proj``, each residual block's time/class projection ``emb``, and the time-embedding
MLP; with ``convolutions`` also on every ``Conv2d`` (peft's convolutional LoRA: ``A`` a
convolution of the layer's kernel into ``r`` channels, ``B`` a 1x1 convolution out of
them), which a new domain's strokes and shapes need; otherwise the convolutions stay
as pretrained. The class embedding is retrained whole: a new
domain's labels name other things than the pretraining set's (digits, not garments).
With ``biases`` every bias and GroupNorm scale trains too (BitFit, Ben Zaken et al.
2022): a few thousand numbers that shift and rescale every layer's features, the
convolutions' included, where adapters on the Linear layers do not reach.

The base is a file of the UNet's tensors as ``torch.save`` wrote them from a ddpm task's
``federated_state()`` (keys ``unet.<tensor>``), e.g. exported from a centralized run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedgen.errors import ConfigError
from fedgen.files import CHECKPOINT_MAGIC

#: Names (last component) of the Linear layers adapters go on; see the module docstring.
ADAPTED_LAYERS = ("qkv", "proj", "emb", "time_embed.0", "time_embed.2")
#: Blocks trained whole (not adapted) on a new domain, and federated with the adapters.
RETRAINED_BLOCKS = ("class_embed",)


def load_unet_weights(unet: nn.Module, path: str) -> None:
    """Load a ddpm UNet's tensors from ``path`` into ``unet`` (in place).

    Raises ``ConfigError`` when the file is missing, unreadable, or holds a UNet of
    another shape, saying what to do.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"task.params.base_weights: no file {file}; export a trained ddpm UNet with "
            "torch.save(task.federated_state(), path) (benchmarks/diffusion.py does)"
        )
    with file.open("rb") as handle:
        checkpoint = handle.read(len(CHECKPOINT_MAGIC)) == CHECKPOINT_MAGIC
    if checkpoint:
        raise ConfigError(
            f"task.params.base_weights: {file} is a fedgen checkpoint, not a UNet's "
            "tensors; start from a run with federation.init_from, or export the UNet with "
            "torch.save(task.federated_state(), path)"
        )
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not its own
        raise ConfigError(f"task.params.base_weights: {file} is not a torch file: {exc}") from exc
    if not isinstance(saved, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in saved.items()
    ):
        raise ConfigError(
            f"task.params.base_weights: {file} holds a {type(saved).__name__}, not a UNet's "
            "named tensors; export one with torch.save(task.federated_state(), path)"
        )
    state = {k.removeprefix("unet."): v for k, v in saved.items()}
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or wrong or set(state) - set(expected):
        raise ConfigError(
            f"task.params.base_weights: {file} holds another UNet ({len(missing)} tensors "
            f"missing, e.g. {missing[:2]}; {len(wrong)} of another shape, e.g. {wrong[:2]}); "
            "use the width and the number of classes it was trained with"
        )
    unet.load_state_dict(state)


def add_lora(
    unet: nn.Module, rank: int, alpha: int, convolutions: bool = False, biases: bool = False
) -> nn.Module:
    """``unet`` with LoRA adapters of ``rank`` on its Linear layers (``ADAPTED_LAYERS``),
    and on every convolution with ``convolutions``; only the adapters,
    ``RETRAINED_BLOCKS`` and (``biases``) the base's biases and GroupNorm scales
    (``bitfit_names``) require gradients afterwards. Adapter A is drawn from the global
    RNG (the task seeds it), B starts at zero."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = [
        name
        for name, module in unet.named_modules()
        if (isinstance(module, nn.Linear) and name.endswith(ADAPTED_LAYERS))
        or (convolutions and isinstance(module, nn.Conv2d))
    ]
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none"
    )
    adapted: nn.Module = inject_adapter_in_model(config, unet)
    tuned = bitfit_names(adapted) if biases else frozenset()
    for name, param in adapted.named_parameters():
        param.requires_grad_(
            is_adapter(name) or name.split(".", 1)[0] in RETRAINED_BLOCKS or name in tuned
        )
    return adapted


def bitfit_names(unet: nn.Module) -> frozenset[str]:
    """The parameters BitFit trains: every bias of the base and every GroupNorm's scale
    (an adapter's own tensors are not the base's)."""
    names = {
        f"{module}.{name}" if module else name
        for module, layer in unet.named_modules()
        for name, _ in layer.named_parameters(recurse=False)
        if name == "bias" or (isinstance(layer, nn.GroupNorm) and name == "weight")
    }
    return frozenset(n for n in names if not is_adapter(n))


def is_adapter(key: str) -> bool:
    """True for a LoRA adapter's tensor (``...lora_A.default.weight``, ``...lora_B...``)."""
    return ".lora_A." in key or ".lora_B." in key
