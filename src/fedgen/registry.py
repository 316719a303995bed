"""Name -> component registries.

Components register themselves where they are defined
(``@TASKS.register("cgan")``); a recipe names them. Looking up an unknown
name lists the names that exist. Every registered task, strategy, sampler, transform,
partitioner and backend class declares a pydantic ``Params`` model beside its
constructor, which checks a recipe's ``params`` (``fedgen.params``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fedgen.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components of one kind (tasks, strategies, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``; a second use of a name is an error."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the component called ``name``; raise ``ConfigError`` listing valid names."""
        _import_builtin_components()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        """Sorted names of every registered component."""
        _import_builtin_components()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        _import_builtin_components()
        return name in self._items

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

#: The modules that register fedgen's own components (imported at the first lookup).
BUILTIN_MODULES = (
    "fedgen.data.sources",
    "fedgen.data.partition",
    "fedgen.data.class_drop",
    "fedgen.data.text_data",
    "fedgen.data.table_sources",
    "fedgen.data.table_data",
    "fedgen.data.table_vertical",
    "fedgen.tasks",
    "fedgen.tasks.tabular",
    "fedgen.strategies",
    "fedgen.transforms",
    "fedgen.data.poison",
    "fedgen.transforms.adversary",
    "fedgen.engine.backends",
    "fedgen.eval.evaluator",
    "fedgen.eval.perplexity",
    "fedgen.eval.table_quality",
    "fedgen.images.grid",
    "fedgen.samples.text",
    "fedgen.samples.table",
)
_imported = False


def _import_builtin_components() -> None:
    # Import lazily so that `import fedgen.registry` stays cheap and cycle-free,
    # while any lookup sees every built-in component.
    global _imported
    if _imported:
        return
    _imported = True
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)
