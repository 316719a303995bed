"""The registries' table of built-in components, and lookups that import only what they name."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fedgen import registry
from fedgen.errors import ConfigError


def _registries() -> list[registry.Registry]:
    return [v for v in vars(registry).values() if isinstance(v, registry.Registry)]


def test_the_builtin_table_names_the_module_that_registers_each_component():
    # Prepare: every built-in module imported, so every component has registered itself.
    registry._import_builtin_components()
    for reg in _registries():
        table = {n: m for m, names in registry.BUILTIN.get(reg.kind, {}).items() for n in names}
        # Assert: each built-in name is registered by the module the table names, and the
        # table lists every name a fedgen module registers (a plugin's are its own).
        ours = {n: m for n, m in reg.registered_by.items() if m.startswith("fedgen.")}
        assert ours == table, f"fix fedgen.registry.BUILTIN[{reg.kind!r}]"


def test_an_unknown_name_lists_every_builtin_without_importing_them():
    with pytest.raises(ConfigError, match=r"unknown task 'gann'.*cgan.*ctgan"):
        registry.TASKS.get("gann")
    assert "tvae" in registry.TASKS and "gann" not in registry.TASKS


def test_an_image_clients_parts_load_no_table_evaluation_or_accounting_library(mnist_dir):
    # Prepare: a fresh interpreter (this one has imported everything), building what a
    # deployed client builds for a client-level DP recipe over secure aggregation.
    script = textwrap.dedent(
        f"""
        import sys
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
    # Assert: pandas (tables), scipy (Frechet distance) and Opacus (the accountant, which a
    # client never asks) each cost a Flower ClientApp a fraction of a second to seconds.
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr
