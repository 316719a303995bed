"""Real tables: the files they come from, their checksums, schemas and natural splits.

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
source and ``table_dirichlet`` on the target splits it. They register in
``SOURCES`` beside the image sets, so ``fedgen data`` lists them and recipes name
them in ``data.sources``.

- ``fair``: statsmodels' extramarital affairs survey (Fair 1978, Redbook 1974),
  6,366 women x 9. As in statsmodels' own logit example, ``affairs`` (time spent
  in affairs) is turned into ``had_affair`` (yes/no), the target; silos are the
  respondent's ``occupation`` (6 codes).
- ``randhie``: statsmodels' RAND Health Insurance Experiment extract, 20,190
  person-years x 10. ``lncoins`` (log of 1 + coinsurance %) becomes the plan's
  coinsurance ``coins`` (0, 25, 50, 95, 100: the silos, as the experiment
  assigned people to plans) and the dummies ``hlthg``/``hlthf``/``hlthp`` become
  one self-rated ``health`` column (excellent when all three are 0), the target.
- ``breast_cancer``: scikit-learn's Wisconsin diagnostic breast cancer table
  (Street, Wolberg and Mangasarian 1993), 569 fine-needle aspirates x 30 continuous
  measurements of the cell nuclei, and the ``diagnosis`` (malignant 212, benign 357),
  the target. No silo column: every aspirate comes from one hospital, and no column
  names a data owner, so it is split by Dirichlet skew of the diagnosis.
- ``heart_disease``: Orange's copy of the Cleveland Clinic heart disease table
  (Detrano et al. 1989), 303 patients x 14. The target is ``diameter narrowing``
  (1: a major vessel narrowed by more than 50% at angiography, 0: not). The silos
  are the ``chest pain`` a patient presents with (asymptomatic, non-anginal,
  atypical angina, typical angina): how a patient presents decides where they are
  seen (a screening programme, a general practice, a chest-pain clinic), so each
  value is a plausible owner of its own patients; ``gender`` would give only two.
  Six rows miss a value (four ``major vessels colored``, two ``thal``) and are
  dropped: the schema admits no missing value, and six of 303 is too few to impute
  from. 297 x 14 remain.
- ``titanic``: Orange's Titanic table (Dawson 1995), 2,201 people aboard x 4
  categorical columns. The target is ``survived`` (yes/no); the silos are the
  ``status`` (first, second, third class, crew): the passengers of each class and
  the crew were listed apart (tickets by class, the crew's sign-on sheets).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from fedgen.data.orange_tab import WheelFile, read_tab
from fedgen.data.sources import SourceStatus
from fedgen.data.table_schema import TableSchema
from fedgen.errors import ChecksumError, ConfigError, DataMissingError
from fedgen.registry import SOURCES


def _read_csv(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data))


def _read_tab_frame(data: bytes) -> pd.DataFrame:
    return read_tab(data.decode("utf-8")).frame


@dataclass(frozen=True, eq=False, kw_only=True)
class TableSource:
    """A real table: its sha256, how it is parsed and derived, its schema, target and silos.

    ``parse`` turns the checked bytes into the file's raw columns, ``derive`` turns
    those into the modelled ones (documented per source in the module docstring);
    the result must match ``schema``. Subclasses say where the bytes are.
    """

    name: str
    description: str
    sha256: str
    schema: TableSchema
    target: str
    silo_column: str | None
    derive: Callable[[pd.DataFrame], pd.DataFrame]
    parse: Callable[[bytes], pd.DataFrame] = _read_csv

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
    parse: Callable[[bytes], pd.DataFrame] = _read_tab_frame

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


def _read_sklearn_csv(data: bytes, features: Sequence[str], target: str) -> pd.DataFrame:
    """scikit-learn's bundled CSV: line 1 is ``<rows>,<features>,<class names...>``, then
    each row's features and its class index; the class index becomes the class name."""
    first, _, body = data.decode("utf-8").partition("\n")
    rows, width, *classes = first.strip().split(",")
    if int(width) != len(features):
        raise ValueError(f"the CSV holds {width} features, {len(features)} names were given")
    frame = pd.read_csv(io.StringIO(body), header=None, names=[*features, target])
    if len(frame) != int(rows):
        raise ValueError(f"the CSV's first line announces {rows} rows, it holds {len(frame)}")
    frame[target] = np.asarray(classes)[frame[target].to_numpy(dtype=np.int64)]
    return frame


def _as_read(raw: pd.DataFrame) -> pd.DataFrame:
    return raw


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


def _derive_heart_disease(raw: pd.DataFrame) -> pd.DataFrame:
    # The six rows with a missing value (module docstring) are dropped.
    return raw.dropna().reset_index(drop=True)


FAIR = PackageTableSource(
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

RANDHIE = PackageTableSource(
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

# The CSV names no column: these are load_breast_cancer's feature_names, in its documented
# order (descr/breast_cancer.rst): each nuclear measurement's mean over the cells of an
# image, then its standard error, then its worst (mean of the three largest) value.
_NUCLEUS = (
    "radius",
    "texture",
    "perimeter",
    "area",
    "smoothness",
    "compactness",
    "concavity",
    "concave points",
    "symmetry",
    "fractal dimension",
)
BREAST_CANCER_FEATURES = (
    *(f"mean {m}" for m in _NUCLEUS),
    *(f"{m} error" for m in _NUCLEUS),
    *(f"worst {m}" for m in _NUCLEUS),
)

BREAST_CANCER = PackageTableSource(
    name="breast_cancer",
    description="scikit-learn: Wisconsin diagnostic breast cancer, 569 x 31",
    module="sklearn",
    relative_path="datasets/data/breast_cancer.csv",
    sha256="fed3eb72d0575ef6192293f5093c6e801b1476b577d0386bf4455504522172ed",
    pip_package="scikit-learn==1.9.1",
    schema=TableSchema.from_mapping(
        {**dict.fromkeys(BREAST_CANCER_FEATURES, "continuous"), "diagnosis": "categorical"}
    ),
    target="diagnosis",
    silo_column=None,
    derive=_as_read,
    parse=partial(_read_sklearn_csv, features=BREAST_CANCER_FEATURES, target="diagnosis"),
)

# The newest orange3 pip found (December 2026). The members read are checked, not the
# wheel: each platform has its own wheel (cp311 manylinux x86_64, the one here, has sha256
# 1c24dc6df818be26710d6d8d7595a8a50682e3c99e6e3bdabe14591e26f5a85b), all with the same tables.
ORANGE3 = WheelFile("orange3", "3.40.0")

HEART_DISEASE = WheelTableSource(
    name="heart_disease",
    description="orange3: Cleveland heart disease (Detrano 1989), 297 x 14",
    wheel=ORANGE3,
    member="Orange/datasets/heart_disease.tab",
    sha256="954e44e3d93a97682b5466c7ea166e16f376f8dd93deef5855f511734e4d6224",
    schema=TableSchema.from_mapping(
        {
            "age": "integer",
            "gender": "categorical",
            "chest pain": "categorical",
            "rest SBP": "integer",
            "cholesterol": "integer",
            "fasting blood sugar > 120": "categorical",
            "rest ECG": "categorical",
            "max HR": "integer",
            "exerc ind ang": "categorical",
            "ST by exercise": "continuous",
            "slope peak exc ST": "categorical",
            "major vessels colored": "integer",
            "thal": "categorical",
            "diameter narrowing": "categorical",
        }
    ),
    target="diameter narrowing",
    silo_column="chest pain",
    derive=_derive_heart_disease,
)

TITANIC = WheelTableSource(
    name="titanic",
    description="orange3: Titanic passengers and crew (Dawson 1995), 2,201 x 4",
    wheel=ORANGE3,
    member="Orange/datasets/titanic.tab",
    sha256="7f82b851d2d565c0c00e826dd5cc9b0feb9dfad0dac8d89875e4e0759f8323a9",
    schema=TableSchema.from_mapping(
        {
            "status": "categorical",
            "age": "categorical",
            "sex": "categorical",
            "survived": "categorical",
        }
    ),
    target="survived",
    silo_column="status",
    derive=_as_read,
)

for _source in (FAIR, RANDHIE, BREAST_CANCER, HEART_DISEASE, TITANIC):
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
