"""What a task generates, how it is conditioned, and the three kinds of tensors it holds.

Client data, sampling, evaluation metrics, the report and ``fedgen sample``
dispatch on a task's ``Modality``; they look its handlers up in registries
keyed by the modality's name, as recipes look up every other component.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Modality(StrEnum):
    """What a task generates."""

    IMAGES = "images"
    TEXT = "text"
    TABLES = "tables"


class Conditioning(StrEnum):
    """What ``Task.sample`` is conditioned on, and so what its ``condition`` is.

    ``CLASS``: a LongTensor of labels (one sample each); ``PROMPT``: a list of
    prompt strings; ``COLUMN``: a mapping of column name to value; ``NONE``: an
    int, how many samples.
    """

    CLASS = "class"
    PROMPT = "prompt"
    COLUMN = "column"
    NONE = "none"


class TensorKind(StrEnum):
    """The three kinds of tensors a task holds.

    ``FEDERATED`` tensors are exchanged and aggregated every round. ``PRIVATE``
    ones stay with their client between rounds (personal layers, adapters kept
    local). ``FROZEN`` ones are a pretrained base: loaded once, never copied per
    client, never sent and never checkpointed (checkpoints record their digest).
    """

    FEDERATED = "federated"
    PRIVATE = "private"
    FROZEN = "frozen"


@dataclass(frozen=True)
class DataSpec:
    """What a task needs to know of the data it will model, for any modality."""

    modality: Modality
    #: Classes of a class-conditioned data set (0 when there are none).
    num_classes: int = 0
    #: ``(channels, height, width)`` of images.
    image_shape: tuple[int, int, int] | None = None
    #: Token vocabulary of text.
    vocab_size: int | None = None
    #: Tables: the merged ``fedgen.data.table_encoder.TableEncoder`` (schema, encoding).
    table: Any = None
