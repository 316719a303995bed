"""The real tables fedgen federates: their files, checksums, schemas and natural splits.

Each is a ``fedgen.data.table_source.TableSource``, registered in ``SOURCES`` beside the
image sets, so ``fedgen data`` lists them and recipes name them in ``data.sources``.

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

import io
from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd

from fedgen.data.orange_tab import WheelFile
from fedgen.data.table_schema import TableSchema
from fedgen.data.table_source import (
    PackageTableSource,
    TableSource,
    WheelTableSource,
)
from fedgen.errors import ConfigError
from fedgen.registry import SOURCES


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
