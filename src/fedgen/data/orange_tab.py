"""Orange's bundled tables without Orange: the .tab format and the wheel that carries them.

Orange (Demšar et al. 2013, "Orange: data mining toolbox in Python", JMLR 14) ships
its sample tables inside its wheel as ``Orange/datasets/<name>.tab``. Installing
orange3 pulls in Qt and much more, so fedgen never installs it: ``pip download
--no-deps`` puts the wheel (a zip, about 6.5 MB) in ``<data dir>/orange3`` and
``WheelFile.read_member`` reads one member out of it, checked against its sha256.

``read_tab`` reads the .tab format's three-line header:

- line 1: the column names, tab-separated;
- line 2: each column's type: ``continuous``/``c``, ``discrete``/``d``, ``string``/``s``,
  or the discrete values themselves, separated by spaces (a space inside a value is
  written ``\\ ``);
- line 3: each column's flag: ``class``/``c`` (the target), ``meta``/``m``,
  ``ignore``/``i`` (the column is dropped) or empty (an ordinary attribute);
  ``key=value`` annotations are allowed and skipped;
- then one row per line, tab-separated; ``?`` or an empty cell is a missing value.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fedgen.data.sources import DEFAULT_DATA_DIR, resolve_data_dir
from fedgen.errors import ChecksumError, DataMissingError

Kind = Literal["continuous", "discrete", "string"]
Role = Literal["attribute", "class", "meta"]

_KINDS: dict[str, Kind] = {
    "continuous": "continuous",
    "c": "continuous",
    "discrete": "discrete",
    "d": "discrete",
    "string": "string",
    "s": "string",
}
_ROLES: dict[str, Role | None] = {
    "class": "class",
    "c": "class",
    "meta": "meta",
    "m": "meta",
    "ignore": None,
    "i": None,
}
_MISSING = ("", "?")


@dataclass(frozen=True)
class TabColumn:
    """One column of a .tab header: its name, kind, declared values and role.

    ``values`` holds a discrete column's values when line 2 lists them (else it is
    empty and any value is allowed).
    """

    name: str
    kind: Kind
    role: Role = "attribute"
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class TabTable:
    """A parsed .tab file: the rows (ignored columns dropped) and the header of each column.

    Continuous columns are ``float64`` with NaN for a missing value; discrete and
    string columns hold ``str`` with ``None`` for a missing value.
    """

    frame: pd.DataFrame
    columns: tuple[TabColumn, ...]

    @property
    def class_columns(self) -> list[str]:
        """The columns flagged ``class`` (Orange's targets), in order."""
        return [c.name for c in self.columns if c.role == "class"]


def _column(name: str, type_field: str, flag_field: str, where: str) -> TabColumn | None:
    """The header of one column, or ``None`` for a column flagged ``ignore``."""
    role: Role | None = "attribute"
    roles = [f for f in flag_field.split() if "=" not in f]
    if len(roles) > 1:
        raise ValueError(f"{where}: column {name!r} has flags {roles}; give it at most one")
    if roles:
        if roles[0] not in _ROLES:
            raise ValueError(
                f"{where}: column {name!r} has flag {roles[0]!r} on line 3; use class, meta, "
                "ignore or leave it empty"
            )
        role = _ROLES[roles[0]]
    kind_text = type_field.strip()
    values: tuple[str, ...] = ()
    if kind_text in _KINDS:
        kind = _KINDS[kind_text]
    else:
        # A list of discrete values: split on spaces not escaped by a backslash.
        values = tuple(v.replace("\\ ", " ") for v in re.split(r"(?<!\\) +", kind_text) if v)
        if len(values) < 2:
            raise ValueError(
                f"{where}: column {name!r} has type {kind_text!r} on line 2; use continuous, "
                "discrete, string or list the discrete values separated by spaces"
            )
        kind = "discrete"
    if role is None:
        return None
    return TabColumn(name, kind, role, values)


def read_tab(text: str, where: str = "the .tab text") -> TabTable:
    """Parse Orange's .tab format (see the module docstring) into a ``TabTable``.

    ``where`` names the text in error messages. Raises ``ValueError`` naming the line
    and column for a header shorter than three lines, an unknown type or flag, a row
    with more or fewer cells than the header has names, a continuous cell that is not
    a number, or a discrete value its declared list does not hold.
    """
    lines = text.splitlines()
    if len(lines) < 3:
        raise ValueError(f"{where}: a .tab file starts with three header lines, got {len(lines)}")
    names = lines[0].split("\t")
    types, flags = lines[1].split("\t"), lines[2].split("\t")
    for number, fields in ((2, types), (3, flags)):
        if len(fields) > len(names):
            raise ValueError(
                f"{where}: line {number} has {len(fields)} fields but line 1 names "
                f"{len(names)} columns"
            )
    # Trailing empty fields of lines 2 and 3 may be left out.
    types += [""] * (len(names) - len(types))
    flags += [""] * (len(names) - len(flags))
    header = [_column(n, t, f, where) for n, t, f in zip(names, types, flags, strict=True)]
    cells: list[list[str | None]] = [[] for _ in names]
    numbers = []  # each row's line number, for error messages
    for number, line in enumerate(lines[3:], start=4):
        if not line:
            continue
        numbers.append(number)
        row = line.split("\t")
        if len(row) != len(names):
            raise ValueError(
                f"{where}: line {number} has {len(row)} cells but the header names "
                f"{len(names)} columns"
            )
        for i, cell in enumerate(row):
            value = cell.strip()
            cells[i].append(None if value in _MISSING else value)
    data: dict[str, object] = {}
    kept = []
    for column, values in zip(header, cells, strict=True):
        if column is None:
            continue
        kept.append(column)
        data[column.name] = _typed(column, values, numbers, where)
    return TabTable(pd.DataFrame(data, columns=[c.name for c in kept]), tuple(kept))


def _typed(column: TabColumn, values: list[str | None], numbers: list[int], where: str) -> object:
    """One column's cells as floats (continuous) or checked strings (discrete, string)."""
    if column.kind == "continuous":
        out = np.full(len(values), np.nan)
        for row, value in enumerate(values):
            if value is None:
                continue
            try:
                out[row] = float(value)
            except ValueError:
                raise ValueError(
                    f"{where}: line {numbers[row]}: continuous column {column.name!r} holds "
                    f"{value!r}, not a number"
                ) from None
        return out
    if column.values:
        allowed = set(column.values)
        for row, value in enumerate(values):
            if value is not None and value not in allowed:
                raise ValueError(
                    f"{where}: line {numbers[row]}: column {column.name!r} holds {value!r}, which "
                    f"its declared values {list(column.values)} do not include"
                )
    return pd.Series(values, dtype=object)


@dataclass(frozen=True)
class WheelFile:
    """A PyPI project's wheel, downloaded (not installed) into ``<data dir>/<project>``.

    Any platform's wheel of ``version`` will do: the members read are data files,
    the same in each, and each is checked against its own sha256.
    """

    project: str
    version: str

    def folder(self, data_dir: Path | str | None = None) -> Path:
        """``<data dir>/<project>``: where the wheel is looked for and downloaded to."""
        return resolve_data_dir(data_dir) / self.project

    def locate(self, data_dir: Path | str | None = None) -> Path | None:
        """The wheel's path, or ``None`` when no wheel of this version is in ``folder`` or,
        after it, in the default data folder's (where set-up downloads it when the data
        folder is read-only)."""
        prefix = f"{self.project}-{self.version}-".lower()
        for folder in (self.folder(data_dir), resolve_data_dir(DEFAULT_DATA_DIR) / self.project):
            if folder.is_dir():
                wheels = sorted(
                    p
                    for p in folder.iterdir()
                    if p.name.lower().startswith(prefix) and p.suffix == ".whl"
                )
                if wheels:
                    return wheels[0]
        return None

    def pip_command(self, data_dir: Path | str | None = None) -> str:
        """The shell command that puts the wheel where ``locate`` looks."""
        return f"pip download --no-deps {self.project}=={self.version} -d {self.folder(data_dir)}"

    def read_member(self, member: str, sha256: str, data_dir: Path | str | None = None) -> bytes:
        """The bytes of ``member`` (a path inside the wheel), checked against ``sha256``.

        Raises ``DataMissingError`` with the ``pip download`` command when the wheel is
        absent, and ``ChecksumError`` when the wheel is unreadable, lacks the member, or
        the member's sha256 differs.
        """
        wheel = self.locate(data_dir)
        if wheel is None:
            raise DataMissingError(
                f"no {self.project} {self.version} wheel in {self.folder(data_dir)} (it holds "
                f"{member}); fetch it, without installing it, with: {self.pip_command(data_dir)}"
            )
        refetch = f"delete it (rm {wheel}) and fetch it again with: {self.pip_command(data_dir)}"
        try:
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(member)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ChecksumError(f"{wheel}: cannot read {member} ({exc}); {refetch}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ChecksumError(
                f"{wheel}: {member} has sha256 {digest}, expected {sha256} (a corrupted or "
                f"different wheel); {refetch}"
            )
        return data
