"""Watch a run live in TensorBoard: each round's metrics as scalars, each evaluation's
sample grid as an image, written with ``torch.utils.tensorboard`` (which needs the
``tensorboard`` package: ``pip install fedgen[tensorboard]``).

Off by default; a recipe turns it on with ``tensorboard: true`` and the event files go
to ``RUN/tensorboard/``. It writes what ``metrics.jsonl`` holds and nothing more, so
what client-level DP withholds from the metrics stays out of TensorBoard too. The step
of every event is the round number as ``metrics.jsonl`` records it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedgen.engine.federation import Callback, Federation, RoundRecord
from fedgen.errors import ConfigError

#: Characters of a text task's generations logged per evaluation.
TEXT_LIMIT = 4000


class TensorBoardCallback(Callback):
    """Writes TensorBoard events for a run.

    Args:
        log_dir: where the event files go (``RUN/tensorboard``).
        samples_dir: where ``round_NNNN.png`` grids are published (``PublishSamples``); the
            grid of an evaluated round is logged as image ``samples`` at that step. This
            callback must come after ``PublishSamples``.

    Raises:
        ConfigError: if the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: Path, samples_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises this when tensorboard is missing
            raise ConfigError(
                "tensorboard: true needs the tensorboard package; install it with "
                "pip install 'fedgen[tensorboard]' (scripts/setup.sh does), or set "
                "tensorboard: false"
            ) from exc
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.samples_dir = Path(samples_dir)
        self.writer: Any = None

    def on_run_start(self, fed: Federation) -> None:
        # A resumed run re-trains the rounds after its checkpoint: purge_step makes
        # TensorBoard drop the earlier events of those rounds instead of showing both.
        purge = fed.next_round if fed.next_round > 0 else None
        self.writer = self._writer_class(str(self.log_dir), purge_step=purge)

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        if self.writer is None:
            return
        step = record.round
        for key, value in record.metrics.items():
            if key == "round" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        grid = self.samples_dir / f"round_{step:04d}.png"
        if "eval_seconds" in record.metrics and grid.is_file():
            with Image.open(grid) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image("samples", pixels, step, dataformats="HWC")
        text = grid.with_suffix(".txt")  # a text task's generations
        if "eval_seconds" in record.metrics and text.is_file():
            # Markdown: indented by four spaces, the generations show as written.
            shown = text.read_text(encoding="utf-8")[:TEXT_LIMIT]
            self.writer.add_text("samples", "    " + shown.replace("\n", "\n    "), step)
        self.writer.flush()  # a live view: each round shows as soon as it ends

    def on_run_end(self, fed: Federation, completed: bool) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
