"""Backends; importing this package registers them."""

from fedgen.engine.backends.base import Backend, LocalWork
from fedgen.engine.backends.flower import FlowerBackend
from fedgen.engine.backends.inprocess import InProcessBackend
from fedgen.engine.backends.process_pool import ProcessPoolBackend
from fedgen.engine.backends.split import SplitBackend
from fedgen.engine.backends.vectorized import VectorizedBackend
from fedgen.engine.backends.vertical import VerticalBackend

__all__ = [
    "Backend",
    "FlowerBackend",
    "InProcessBackend",
    "LocalWork",
    "ProcessPoolBackend",
    "SplitBackend",
    "VectorizedBackend",
    "VerticalBackend",
]
