"""Server strategies; importing this package registers them."""

from fedgen.strategies.base import Aggregate, Strategy
from fedgen.strategies.clustered import KldClustered
from fedgen.strategies.fedavg import FedAvg

__all__ = ["Aggregate", "FedAvg", "KldClustered", "Strategy"]
