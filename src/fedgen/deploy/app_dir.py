"""The Flower app that ``flwr run`` ships: two small modules that call into fedgen.

Flower builds an app folder into a FAB (a zip of its ``.py`` and ``.toml`` files)
and installs it on the SuperLink and the SuperNodes; the code it runs there is
fedgen's, from the installed package (``fedgen.deploy.server_app`` and
``client_app``). So the app folder is written from here, never edited by hand,
and every machine must have the same fedgen installed (the hello checks it).
"""

from __future__ import annotations

from pathlib import Path

from fedgen.version import __version__

PYPROJECT = """\
[project]
name = "fedgen-app"
version = "{version}"
description = "fedgen's round loop on Flower: ServerApp and ClientApp"
license = "Apache-2.0"
dependencies = ["flwr==1.41.0", "fedgen=={version}"]

[tool.flwr.app]
publisher = "fedgen"

[tool.flwr.app.components]
serverapp = "fedgen_app.server_app:app"
clientapp = "fedgen_app.client_app:app"

# Only keys declared here can be set at `flwr run` (fedgen deploy run sets them).
[tool.flwr.app.config]
recipe = ""
run-dir = ""
overrides = "[]"
"""

SERVER = '''\
"""Flower's entry point for fedgen's server side (written by fedgen.deploy.app_dir)."""

from flwr.serverapp import ServerApp

from fedgen.deploy.server_app import serve

app = ServerApp()
app.main()(serve)
'''

CLIENT = '''\
"""Flower's entry point for fedgen's client side (written by fedgen.deploy.app_dir)."""

from flwr.clientapp import ClientApp

from fedgen.deploy.client_app import answer

app = ClientApp()
app.query()(answer)
app.train()(answer)
'''


def write_app(folder: Path) -> Path:
    """Write the app folder (replacing an older one); returns it."""
    package = folder / "fedgen_app"
    package.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(version=__version__))
    (package / "__init__.py").write_text('"""fedgen\'s Flower app."""\n')
    (package / "server_app.py").write_text(SERVER)
    (package / "client_app.py").write_text(CLIENT)
    return folder
