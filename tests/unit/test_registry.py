"""The registries' table of built-in components, and lookups that import only what they name."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fedgen
from fedgen import registry


def _registries() -> list[registry.Registry]:
    return [v for v in vars(registry).values() if isinstance(v, registry.Registry)]


def test_the_builtin_table_names_the_module_that_registers_each_component():
    # Prepare: every module of fedgen that calls a registry's register() imported (not
    # only the table's), so a component of a module the table forgot registers too.
    root = Path(fedgen.__file__).parent
    for path in sorted(root.rglob("*.py")):
        if ".register(" in path.read_text() and path.name != "registry.py":
            parts = path.relative_to(root.parent).with_suffix("").parts
            importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    for reg in _registries():
        table = {n: m for m, names in registry.BUILTIN.get(reg.kind, {}).items() for n in names}
        # Assert: each built-in name is registered by the module the table names, and the
        # table lists every name a fedgen module registers (a plugin's are its own).
        ours = {n: m for n, m in reg.registered_by.items() if m.startswith("fedgen.")}
        assert ours == table, f"fix fedgen.registry.BUILTIN[{reg.kind!r}]"


def test_a_builtin_name_cannot_be_taken_by_another_module():
    with pytest.raises(ValueError, match="'cgan' is fedgen's own"):
        registry.TASKS.register("cgan")


def test_an_image_client_loads_only_what_it_uses(mnist_dir):
    # Prepare: a fresh interpreter (this one has imported everything). It asks the
    # registries what a config check asks, then builds what a deployed client builds for
    # a client-level DP recipe over secure aggregation.
    script = textwrap.dedent(
        f"""
        import sys
        from fedgen import registry
        from fedgen.errors import ConfigError

        try:
            registry.TASKS.get("gann")
        except ConfigError as exc:
            assert "cgan" in str(exc) and "ctgan" in str(exc), exc
        assert "tvae" in registry.TASKS and "gann" not in registry.TASKS
        assert "fair" in registry.SOURCES.names()
        print(sorted(m for m in sys.modules if m.startswith("fedgen.tasks") or m == "torch"))

        from fedgen.config import load_config
        from fedgen.experiment import RecipeClientSide

        cfg = load_config(None, [
            "data.sources=[mnist]", "data.data_dir={mnist_dir}", "data.num_clients=3",
            "strategy.params={{sampling: poisson, weighted: false, fixed_denominator: true}}",
            "transforms=[{{name: clip, params: {{max_norm: 1.0}}}}, "
            "{{name: client_dp, params: {{noise_multiplier: 0.5}}}}, {{name: secagg}}]",
        ])
        RecipeClientSide(cfg).open().data(0)
        print(sorted(m for m in ("pandas", "scipy", "opacus", "sklearn") if m in sys.modules))
        """
    )
    # Execute
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    # Assert: an unknown name's error lists every built-in, and 'in' and names() answer,
    # without importing one task (nor torch); and pandas (tables), scipy (the Frechet
    # distance) and Opacus (the accountant, which a client never asks) stay unloaded: each
    # costs a Flower ClientApp a fraction of a second to seconds.
    registries, client = done.stdout.strip().splitlines()[-2:]
    assert registries == "[]", done.stderr
    assert client == "[]", done.stderr
