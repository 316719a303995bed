"""A synthetic, labelled image data set drawn from a trained task, written to disk.

What most users want from a federated generator is data to train on. Three layouts:

- ``png``: one grid per export, one row per class (for a look, not for training);
- ``npz``: ``images`` (uint8, ``(N, C, H, W)``), ``labels`` (int64) and ``class_names``;
- ``folder``: one folder per class (``0_T-shirt_top/00000.png``, the layout torchvision's
  ``ImageFolder`` reads) plus ``labels.csv``.

Beside every export, a small JSON manifest records where the samples came from (the
checkpoint's round and sha256, the run, the seed) so a data set can be traced back
to the model that made it and checked against the run's signed ledger.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fedgen.images.grid import class_grid_labels, save_grid
from fedgen.samples.export_format import ExportFormat

#: Samples drawn per call to the task, to bound memory for large exports.
BATCH = 500


def export_image_dataset(
    task: Any,
    out: Path,
    per_class: int,
    fmt: ExportFormat,
    generator: torch.Generator,
    class_names: list[str],
    provenance: dict[str, Any],
) -> tuple[Path, Path]:
    """Draw ``per_class`` images of every class from ``task`` and write them as ``fmt``.

    Args:
        out: the file (``png``, ``npz``: its suffix is set) or folder (``folder``: must not
            exist or be empty) to write.
        class_names: one name per class, in label order.
        provenance: recorded in the manifest as given (checkpoint round and digest, run).

    Returns:
        The written data set's path and its manifest's path.

    Raises:
        FileExistsError: if ``folder`` would write into a non-empty folder.
    """
    if fmt is ExportFormat.FOLDER and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} is a non-empty folder; choose a new --out for the data set")
    labels = class_grid_labels(task.num_classes, per_class)
    images = _to_uint8(_sample(task, labels, generator))
    if fmt is ExportFormat.PNG:
        target = save_grid(images, out.with_suffix(".png"), nrow=per_class)
        manifest = target.with_suffix(".json")
        layout = "one grid row per class, top to bottom in label order"
    elif fmt is ExportFormat.NPZ:
        target = out.with_suffix(".npz")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            target, images=images.numpy(), labels=labels.numpy(), class_names=np.array(class_names)
        )
        manifest = target.with_suffix(".json")
        layout = "images uint8 (N, C, H, W), labels int64 (N,), class_names (classes,)"
    else:
        target = out
        _write_folder(images, labels, class_names, target)
        manifest = target / "manifest.json"
        layout = "one folder per class (label_name/NNNNN.png) and labels.csv (file,label,class)"
    record = {
        "format": str(fmt),
        "layout": layout,
        "count": int(labels.numel()),
        "per_class": per_class,
        "image_shape": list(images.shape[1:]),
        "class_names": class_names,
        **provenance,
    }
    manifest.write_text(json.dumps(record, indent=1) + "\n")
    return target, manifest


def _sample(task: Any, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images in [0, 1], ``(N, C, H, W)``, drawn ``BATCH`` labels at a time."""
    parts = [task.sample(labels[i : i + BATCH], generator) for i in range(0, len(labels), BATCH)]
    return torch.cat(parts)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    pixels = torch.nan_to_num(images.detach().cpu().float(), nan=0.0).clamp(0.0, 1.0)
    return pixels.mul(255.0).round().to(torch.uint8)


def _write_folder(
    images: torch.Tensor, labels: torch.Tensor, class_names: list[str], root: Path
) -> None:
    folders = [f"{i}_{_safe(name)}" for i, name in enumerate(class_names)]
    rows = []
    counts = [0] * len(class_names)
    for image, label in zip(images, labels.tolist(), strict=True):
        relative = Path(folders[label]) / f"{counts[label]:05d}.png"
        counts[label] += 1
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(root / relative)
        rows.append((relative.as_posix(), label, class_names[label]))
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "class"])
        writer.writerows(rows)


def _safe(name: str) -> str:
    """A class name as a folder name: letters, digits, ``.-_`` kept, the rest ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"
