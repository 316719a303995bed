"""A run interrupted in round 2 and resumed from its checkpoint, beside an uninterrupted
one, for the tests of backends that carry state between rounds (``tests/`` is on
``sys.path``, see ``tiny_federation``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedgen.engine.callbacks import CheckpointCallback
from fedgen.engine.federation import Federation
from fedgen.experiment import build_experiment, restore_latest


def uninterrupted_and_resumed(cfg: Any, tmp_path: Path) -> tuple[Federation, Federation]:
    """An uninterrupted run of ``cfg``, and one stopped in round 2 (its third backend
    call), restored from round 1's checkpoint and run to the end."""
    ref = build_experiment(cfg).federation
    assert ref.run()
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    original, calls = first.backend.run, {"n": 0}

    def run(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    first.backend.run = run  # type: ignore[method-assign]
    assert first.run() is False
    second = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    assert restore_latest(second, tmp_path, cfg) == 1
    assert second.run()
    return ref, second
