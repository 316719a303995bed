"""Server strategies; importing this package registers them."""

from fedgen.strategies.base import Aggregate, Strategy
from fedgen.strategies.clustered import KldClustered
from fedgen.strategies.fedavg import FedAvg
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
    "FedAvg",
    "KldClustered",
    "Krum",
    "MultiKrum",
    "NormBound",
    "RobustAggregation",
    "Strategy",
    "TrimmedMean",
]
