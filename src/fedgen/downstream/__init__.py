"""Generative models in service of federated learning (issue 18).

A federated classifier trained on non-IID clients three ways at equal rounds (real data
only; clients topped up with synthetic samples, as GeFL; the server fine-tuning on
synthetic samples), and one-shot federation (FedCVAE-Ens: each client sends a
conditional generator once). ``run_downstream`` drives them from a recipe's
``downstream:`` section; it sits beside the CLI and the attacks because, like them, it
drives whole runs (the generator's, then the classifier's) and measures leakage.
"""

from fedgen.downstream.errors import DownstreamError
from fedgen.downstream.run import run_downstream

__all__ = ["DownstreamError", "run_downstream"]
