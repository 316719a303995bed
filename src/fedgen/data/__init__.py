"""Data: real sources, partitioners, and the per-client shards built from them.

Importing this package registers the built-in sources ("fashion-mnist",
"mnist", "kmnist", "digits") and partitioners ("iid", "dirichlet", "shards",
"quantity", "multi_domain").
"""

from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.data.federated import FederatedData, make_federated_data
from fedgen.data.partition import (
    DirichletPartitioner,
    IIDPartitioner,
    MultiDomainPartitioner,
    Partitioner,
    QuantitySkewPartitioner,
    ShardPartitioner,
)
from fedgen.data.sources import (
    Source,
    SourceStatus,
    get_source,
    load_domains,
    source_statuses,
)

__all__ = [
    "ClientData",
    "DirichletPartitioner",
    "FederatedData",
    "IIDPartitioner",
    "ImageDataset",
    "MultiDomainPartitioner",
    "Partitioner",
    "QuantitySkewPartitioner",
    "ShardPartitioner",
    "Source",
    "SourceStatus",
    "get_source",
    "load_domains",
    "make_federated_data",
    "source_statuses",
]
