"""Name -> component registries.

Components register themselves where they are defined
(``@TASKS.register("cgan")``); a recipe names them. Looking up an unknown
name lists the names that exist. Every registered task, strategy, sampler, transform,
partitioner and backend class declares a pydantic ``Params`` model beside its
constructor, which checks a recipe's ``params`` (``fedgen.params``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fedgen.errors import ConfigError

T = TypeVar("T")


#: Where each built-in component registers itself: registry kind -> module -> names. A
#: lookup imports only its component's module, and a name's presence or the list of names
#: needs no import: a process that trains a cGAN never loads pandas for the table
#: components (with the lazy imports beside them, a Flower ClientApp's start fell from 4.6
#: to 3.7 CPU-seconds, 2026-12-06). ``tests/unit/test_registry.py`` checks this table
#: against what the modules register.
BUILTIN: dict[str, dict[str, tuple[str, ...]]] = {
    "task": {
        "fedgen.tasks.gan": ("cgan",),
        "fedgen.tasks.vae": ("cvae",),
        "fedgen.tasks.diffusion": ("ddpm",),
        "fedgen.tasks.split_gan": ("huscf_cgan",),
        "fedgen.tasks.byte_gpt": ("byte_gpt",),
        "fedgen.tasks.lm_lora": ("lm_lora",),
        "fedgen.tasks.tabular.ctgan": ("ctgan",),
        "fedgen.tasks.tabular.tvae": ("tvae",),
        "fedgen.tasks.tabular.vertical_ctgan": ("vertical_ctgan",),
        "fedgen.tasks.tabular.vertical_tvae": ("vertical_tvae",),
    },
    "strategy": {
        "fedgen.strategies.fedavg": ("fedavg",),
        "fedgen.strategies.fedopt": ("fedavgm", "fedadagrad", "fedyogi", "fedadam"),
        "fedgen.strategies.fedprox": ("fedprox",),
        "fedgen.strategies.ditto": ("ditto",),
        "fedgen.strategies.clustered": ("kld_clustered",),
        "fedgen.strategies.robust": (
            "median",
            "trimmed_mean",
            "krum",
            "multi_krum",
            "bulyan",
            "norm_bound",
        ),
    },
    "client sampler": {"fedgen.strategies.sampling": ("fixed", "poisson")},
    "transform": {
        "fedgen.transforms.clip": ("clip",),
        "fedgen.transforms.cast": ("cast",),
        "fedgen.transforms.dp": ("client_dp",),
        "fedgen.transforms.sparsify": ("topk", "random_mask"),
        "fedgen.transforms.lowrank": ("lowrank",),
        "fedgen.transforms.quantize": ("quantize", "qsgd"),
        "fedgen.transforms.secagg.transform": ("secagg",),
        "fedgen.transforms.sign": ("sign",),
        "fedgen.transforms.subspace": ("subspace",),
    },
    "adversary": {
        "fedgen.data.poison": ("label_flip", "mode_collapse", "backdoor"),
        "fedgen.transforms.adversary": ("sign_flip", "scaling", "gaussian", "free_rider"),
    },
    "partitioner": {
        "fedgen.data.partition": ("iid", "dirichlet", "shards", "quantity", "multi_domain"),
        "fedgen.data.class_drop": ("class_drop",),
        "fedgen.data.text_data": ("themes",),
        "fedgen.data.table_data": ("table_silos", "table_dirichlet"),
        "fedgen.data.table_vertical": ("table_vertical",),
    },
    "data source": {
        "fedgen.data.sources": ("mnist", "fashion-mnist", "kmnist", "digits"),
        "fedgen.data.table_sources": (
            "fair",
            "randhie",
            "breast_cancer",
            "heart_disease",
            "titanic",
        ),
    },
    "text source": {"fedgen.data.text_sources": ("fortunes", "kjv", "python-docs")},
    "backend": {
        "fedgen.engine.backends.inprocess": ("inprocess",),
        "fedgen.engine.backends.process_pool": ("process_pool",),
        "fedgen.engine.backends.vectorized": ("vectorized",),
        "fedgen.engine.backends.split": ("split",),
        "fedgen.engine.backends.vertical": ("vertical",),
        "fedgen.engine.backends.flower": ("flower",),
    },
    "evaluator of a modality": {
        "fedgen.eval.evaluator": ("images",),
        "fedgen.eval.perplexity": ("text",),
        "fedgen.eval.table_quality": ("tables",),
    },
    "sample writer of a modality": {
        "fedgen.images.grid": ("images",),
        "fedgen.samples.text": ("text",),
        "fedgen.samples.table": ("tables",),
    },
}

#: Every module that registers fedgen's own components (a fork server preloads them all).
BUILTIN_MODULES = tuple(dict.fromkeys(m for homes in BUILTIN.values() for m in homes))


class Registry(Generic[T]):
    """A named table of components of one kind (tasks, strategies, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        #: Built-in names -> the module that registers them (imported at the first lookup).
        self._homes = {n: m for m, names in BUILTIN.get(kind, {}).items() for n in names}
        #: The module each name was registered from (checked against ``BUILTIN``).
        self.registered_by: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``; a second use of a name is an error."""
        caller = sys._getframe(1).f_globals.get("__name__", "?")
        home = self._homes.get(name)
        if home is not None and caller != home:
            # Else it would win silently where the built-in's module was not imported yet
            # (and lose in a worker that preloads them all).
            raise ValueError(f"{self.kind} {name!r} is fedgen's own ({home}); choose another name")

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self.registered_by[name] = caller
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the component called ``name``; raise ``ConfigError`` listing valid names."""
        if name not in self._items and name in self._homes:
            importlib.import_module(self._homes[name])
            if name not in self._items:  # the table above is wrong: say where to look
                raise RuntimeError(
                    f"{self._homes[name]} does not register {self.kind} {name!r}; fix "
                    "fedgen.registry.BUILTIN"
                )
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        """Sorted names of every registered component (built-in ones need no import)."""
        return sorted({*self._items, *self._homes})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._homes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


TASKS: Registry[type] = Registry("task")
STRATEGIES: Registry[type] = Registry("strategy")
#: Client selection (``fedgen.strategies.sampling``), which every strategy delegates to.
SAMPLERS: Registry[type] = Registry("client sampler")
TRANSFORMS: Registry[type] = Registry("transform")
#: Simulated malicious clients (``attack.kind``): data poisoners (``fedgen.data.poison``)
#: and update poisoners (``fedgen.transforms.adversary``).
ADVERSARIES: Registry[type] = Registry("adversary")
PARTITIONERS: Registry[type] = Registry("partitioner")
SOURCES: Registry[object] = Registry("data source")
#: Text corpora (``fedgen.data.text_sources``), which ``data.sources`` may name too.
TEXT_SOURCES: Registry[Any] = Registry("text source")
BACKENDS: Registry[type] = Registry("backend")
#: Per modality (``fedgen.modality.Modality``): builds the evaluator of a run's samples,
#: ``factory(data, seed=..., settings=EvalConfig) -> evaluator`` with
#: ``evaluator.evaluate_task(task, generator, final) -> figures`` and ``describe()``.
EVALUATORS: Registry[Any] = Registry("evaluator of a modality")
#: Per modality: writes samples a person can look at,
#: ``writer(task, path_without_suffix, per_condition, generator) -> written path``.
SAMPLE_WRITERS: Registry[Any] = Registry("sample writer of a modality")
