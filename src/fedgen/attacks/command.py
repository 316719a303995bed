"""`fedgen attack RUN_DIR --kind membership|inversion`: the command-line face of ``run_attack``.

Register it on the CLI app with ``app.command("attack")(attack_command)``.
Options left out take ``run_attack``'s defaults.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from fedgen.errors import FedgenError


class AttackKindChoice(StrEnum):
    """The attacks ``fedgen attack`` runs."""

    membership = "membership"
    inversion = "inversion"


def attack_command(
    run_dir: Annotated[Path, typer.Argument(help="run folder to attack (its newest checkpoint)")],
    kind: Annotated[AttackKindChoice, typer.Option("--kind", help="which attack")],
    out: Annotated[
        Path | None, typer.Option(help="folder for the JSON and picture (default: RUN_DIR)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of every random draw of the attack")] = 0,
    n: Annotated[
        int | None, typer.Option("--n", help="membership: members and non-members each")
    ] = None,
    samples_per_class: Annotated[
        int | None, typer.Option(help="membership: synthetic samples per class (GAN-Leaks)")
    ] = None,
    space: Annotated[
        str | None, typer.Option(help="membership: GAN-Leaks distance in 'pixel' or 'features'")
    ] = None,
    client: Annotated[
        int | None, typer.Option(help="the client attacked (inversion) or whose data are members")
    ] = None,
    untrained: Annotated[
        bool,
        typer.Option(
            help="membership: attack the run's initial weights (the reference: what the "
            "attack reads from members and non-members alone); needs no checkpoint"
        ),
    ] = False,
    batch_size: Annotated[
        int | None, typer.Option(help="inversion: images in the client's batch")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="inversion: optimiser steps")] = None,
    restarts: Annotated[int | None, typer.Option(help="inversion: random restarts")] = None,
    clip_norm: Annotated[float | None, typer.Option(help="inversion: DP clipping norm C")] = None,
    noise_multiplier: Annotated[
        float | None, typer.Option(help="inversion: DP noise multiplier z (std z*C)")
    ] = None,
    secure_sum_clients: Annotated[
        int | None, typer.Option(help="inversion: clients in the secure sum")
    ] = None,
) -> None:
    """Measure what a trained run leaks: membership inference or gradient inversion.

    Writes RUN_DIR/attack_<kind>.json and a picture, and prints the figures.
    """
    from fedgen.attacks.run import run_attack

    given: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "samples_per_class": samples_per_class,
        "space": space,
        "client": client,
        "untrained": untrained or None,
        "batch_size": batch_size,
        "iterations": iterations,
        "restarts": restarts,
        "clip_norm": clip_norm,
        "noise_multiplier": noise_multiplier,
        "secure_sum_clients": secure_sum_clients,
    }
    options = {k: v for k, v in given.items() if v is not None}
    try:
        figures = run_attack(run_dir, kind.value, out=out, **options)
    except FedgenError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(json.dumps(figures, indent=1))
    typer.echo(f"written to {(out or run_dir) / f'attack_{kind.value}.json'}")
