"""Server strategies; importing this package registers them."""

from fedgen.strategies.base import Aggregate, Strategy
from fedgen.strategies.clustered import KldClustered
from fedgen.strategies.ditto import Ditto
from fedgen.strategies.fedavg import FedAvg
from fedgen.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedgen.strategies.fedprox import FedProx
from fedgen.strategies.robust import (
    Bulyan,
    CoordinateMedian,
    Krum,
    MultiKrum,
    NormBound,
    RobustAggregation,
    TrimmedMean,
)

__all__ = [
    "Aggregate",
    "Bulyan",
    "CoordinateMedian",
    "Ditto",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "KldClustered",
    "Krum",
    "MultiKrum",
    "NormBound",
    "RobustAggregation",
    "Strategy",
    "TrimmedMean",
]
