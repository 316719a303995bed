"""A real table's source: where its file is, its checksum, how it is parsed and checked.

A ``TableSource`` is a real table (DATA.md "Tabular"), found without importing or
installing what carries it, checked against its sha256, parsed, derived and checked
against the source's schema. It comes in two kinds:

- ``PackageTableSource``: a file inside an installed Python package (statsmodels,
  scikit-learn), found with ``importlib`` without importing the package;
- ``WheelTableSource``: a file inside a wheel downloaded, not installed, into
  ``<data dir>/<project>`` (orange3: ``fedgen.data.orange_tab``).

Each source names a ``target`` (the categorical column machine-learning efficacy
predicts) and a ``silo_column`` (a categorical column whose values make realistic
data owners), or ``None`` when no column does: ``table_silos`` then refuses the
source and ``table_dirichlet`` on the target splits it. The catalogue of
tables is ``fedgen.data.table_sources``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from fedgen.data.orange_tab import WheelFile, read_tab
from fedgen.data.sources import SourceStatus
from fedgen.data.table_schema import TableSchema
from fedgen.errors import ChecksumError, ConfigError, DataMissingError
from fedgen.modality import Modality


def read_csv_bytes(data: bytes) -> pd.DataFrame:
    """A CSV file's bytes (header line, comma-separated) as a frame."""
    return pd.read_csv(io.BytesIO(data))


def read_tab_bytes(data: bytes) -> pd.DataFrame:
    """An Orange .tab file's bytes as a frame (``fedgen.data.orange_tab.read_tab``)."""
    return read_tab(data.decode("utf-8")).frame


@dataclass(frozen=True, eq=False, kw_only=True)
class TableSource:
    """A real table: its sha256, how it is parsed and derived, its schema, target and silos.

    ``parse`` turns the checked bytes into the file's raw columns, ``derive`` turns
    those into the modelled ones (documented per source in the module docstring);
    the result must match ``schema``. Subclasses say where the bytes are.
    """

    #: What a run on this source generates (read without importing this module's pandas).
    modality: ClassVar[Modality] = Modality.TABLES
    name: str
    description: str
    sha256: str
    schema: TableSchema
    target: str
    silo_column: str | None
    derive: Callable[[pd.DataFrame], pd.DataFrame]
    parse: Callable[[bytes], pd.DataFrame] = read_csv_bytes

    def status(self, data_dir: Path | str | None = None) -> SourceStatus:
        """Whether the file is present and where (its checksum is verified by ``load``)."""
        raise NotImplementedError

    def provide_commands(self, data_dir: Path | str | None = None) -> str:
        """The shell command that makes the table present."""
        raise NotImplementedError

    def checked_bytes(self, data_dir: Path | str | None = None) -> bytes:
        """The file's bytes, checked against ``sha256``.

        Raises ``DataMissingError`` (with the command that provides it) when it is
        absent and ``ChecksumError`` when it differs.
        """
        raise NotImplementedError

    def download(self, data_dir: Path | str | None = None, base_url: str | None = None) -> Path:
        """Tables are never fetched from a URL by fedgen: say how to get one."""
        raise ConfigError(
            f"{self.name} is not downloaded by fedgen; run: {self.provide_commands(data_dir)}"
        )

    def load(self, data_dir: Path | str | None = None) -> pd.DataFrame:
        """The table, derived and checked against ``schema`` (categories as strings).

        ``data_dir`` is where a downloaded file is looked for (default
        ``$FEDGEN_DATA_DIR``, else ``~/.cache/fedgen/data``). Raises as ``checked_bytes``.
        """
        raw = self.parse(self.checked_bytes(data_dir))
        return self.schema.check(self.derive(raw), f"table {self.name}")


@dataclass(frozen=True, eq=False, kw_only=True)
class PackageTableSource(TableSource):
    """A table inside an installed package: ``<package folder>/<relative_path>``."""

    module: str
    relative_path: str
    pip_package: str

    def locate(self) -> Path | None:
        """The file's path if the package is installed (the package is not imported)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            path = Path(folder) / self.relative_path
            if path.is_file():
                return path
        return None

    def status(self, data_dir: Path | str | None = None) -> SourceStatus:
        """Where the table is (``data_dir`` is not used: the package holds it)."""
        found = self.locate()
        return SourceStatus(
            self.name,
            found is not None,
            found,
            [] if found is None else [found.parent],
            self.provide_commands(),
        )

    def provide_commands(self, data_dir: Path | str | None = None) -> str:
        return f"pip install {self.pip_package}"

    def checked_bytes(self, data_dir: Path | str | None = None) -> bytes:
        """The file's bytes (``data_dir`` is not used); raises as ``TableSource.checked_bytes``."""
        path = self.locate()
        if path is None:
            raise DataMissingError(
                f"table {self.name} ships with the Python package {self.pip_package}, which "
                f"is not installed; run: pip install {self.pip_package}"
            )
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise ChecksumError(
                f"{path}: sha256 {digest}, expected {self.sha256} (another version of "
                f"{self.pip_package}?); reinstall it with pip install --force-reinstall "
                f"{self.pip_package}"
            )
        return data


@dataclass(frozen=True, eq=False, kw_only=True)
class WheelTableSource(TableSource):
    """A table inside a downloaded wheel: member ``member`` of ``wheel``, a .tab file."""

    wheel: WheelFile
    member: str
    parse: Callable[[bytes], pd.DataFrame] = read_tab_bytes

    def status(self, data_dir: Path | str | None = None) -> SourceStatus:
        """Whether the wheel is in ``<data dir>/<project>`` (its member is checked by ``load``)."""
        found = self.wheel.locate(data_dir)
        return SourceStatus(
            self.name,
            found is not None,
            found,
            [self.wheel.folder(data_dir)],
            self.provide_commands(data_dir),
        )

    def provide_commands(self, data_dir: Path | str | None = None) -> str:
        return self.wheel.pip_command(data_dir)

    def checked_bytes(self, data_dir: Path | str | None = None) -> bytes:
        """The member's bytes; raises as ``TableSource.checked_bytes``."""
        return self.wheel.read_member(self.member, self.sha256, data_dir)
