"""Which model a command draws from a finished run (``fedgen sample --model``,
``fedgen eval --model``, ``downstream.generator_model``); apart from the engine so that
the command line can name the choices without loading torch."""

from __future__ import annotations

from enum import StrEnum


class ModelChoice(StrEnum):
    """``run``: the model the run's own evaluations and sample grids showed (its
    ``eval.model``, as ``summary.json``'s ``evaluated_model`` names it); ``global``: the
    federated tensors with any private ones at their initial values; ``largest_client``:
    the own model of the largest client that trained (``eval.model: largest_client``);
    ``union``: class-conditional images from every client's own model, each class drawn
    from the clients holding it (``fedgen.engine.image_union``)."""

    RUN = "run"
    GLOBAL = "global"
    LARGEST_CLIENT = "largest_client"
    UNION = "union"
