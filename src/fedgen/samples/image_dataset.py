"""A synthetic, labelled image data set drawn from a trained task, written to disk.

What most users want from a federated generator is data to train on. Three layouts:

- ``png``: one grid per export, one row per class (for a look, not for training);
- ``npz``: ``images`` (uint8, ``(N, C, H, W)``), ``labels`` (int64) and ``class_names``;
- ``folder``: one folder per class (``0_T-shirt_top/00000.png``, the layout torchvision's
  ``ImageFolder`` reads) plus ``labels.csv``.

Beside every export, a small JSON manifest (``OUT.npz.json``, ``OUT.png.json``, or
``manifest.json`` inside the folder) records where the samples came from (the
checkpoint's round and sha256, the run, the seed) so a data set can be traced back
to the model that made it and checked against the run's signed ledger.

``npz`` and ``folder`` are drawn and written ``BATCH`` images at a time, so memory stays
bounded whatever the size; an export never overwrites anything, and a failed one leaves
nothing behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from fedgen.errors import FedgenError
from fedgen.images.grid import save_grid
from fedgen.samples.export_format import ExportFormat

#: Samples drawn per call to the task, to bound memory for large exports.
BATCH = 500
#: Largest sample grid drawn: a grid is a picture to look at, and it is built whole in
#: memory (the samples as floats, then the picture); a data set is ``npz`` or ``folder``.
MAX_GRID_PIXELS = 100_000_000
#: ``save_grid``'s padding and upscaling, which set a grid's size in pixels.
GRID_PADDING, GRID_SCALE = 2, 2
#: The least a file takes on disk (one block), which dominates a folder of tiny PNGs.
MIN_FILE_BYTES = 4096


class ExportError(FedgenError):
    """An export that cannot be written where asked, or would not fit; says what to do."""


class ExportExistsError(ExportError, FileExistsError):
    """An export would overwrite an existing file or write into a non-empty folder."""


def export_paths(out: Path, fmt: ExportFormat) -> tuple[Path, Path]:
    """The data set's path and its manifest's for ``--out out``: ``out.npz`` and
    ``out.npz.json`` (each format its own manifest name, so two exports to one ``--out``
    keep both records); ``folder``: ``out/`` and ``out/manifest.json``."""
    if fmt is ExportFormat.FOLDER:
        return out, out / "manifest.json"
    target = out.with_suffix(f".{fmt}")
    return target, target.with_name(target.name + ".json")


def check_parent(path: Path) -> None:
    """Raise ``ExportError`` unless ``path``'s folders are (or can be made) folders we
    may write in, so a bad ``--out`` fails before anything is drawn."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise ExportError(
            f"cannot write {path}: {ancestor} is a file, not a folder; choose an --out outside it"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportError(
            f"cannot write {path}: no permission to write in {ancestor}; "
            "choose an --out in a folder you can write"
        )


def check_grid_size(num_classes: int, per_class: int, shape: tuple[int, ...] | None) -> None:
    """Raise ``ExportError`` if a grid of ``per_class`` images per class would exceed
    ``MAX_GRID_PIXELS`` (said before anything is drawn or allocated)."""
    if shape is None:
        return  # a task that does not say its image size: nothing to bound it by
    height, width = shape[-2:]
    rows_px = (num_classes * (height + GRID_PADDING) + GRID_PADDING) * GRID_SCALE
    cols_px = (per_class * (width + GRID_PADDING) + GRID_PADDING) * GRID_SCALE
    if rows_px * cols_px <= MAX_GRID_PIXELS:
        return
    most = (MAX_GRID_PIXELS // rows_px // GRID_SCALE - GRID_PADDING) // (width + GRID_PADDING)
    raise ExportError(
        f"a grid of {per_class:,} images per class would be {cols_px:,} x {rows_px:,} "
        f"pixels; grids stop at {MAX_GRID_PIXELS // 1_000_000} megapixels, as they are "
        "pictures built whole in memory: "
        + (f"give --per-class/--n {most:,} or fewer, or " if most >= 1 else "")
        + "export a data set with --format npz or --format folder (written in batches)"
    )


def image_shape(task: Any) -> tuple[int, ...] | None:
    """``(C, H, W)`` of ``task``'s images (a union sampler: of the task it draws through),
    or None if it does not say."""
    shape = getattr(task, "image_shape", None) or getattr(
        getattr(task, "task", None), "image_shape", None
    )
    return tuple(int(x) for x in shape) if shape is not None else None


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
        The written data set's path and its manifest's path (``export_paths``).

    Raises:
        ExportExistsError: if the data set or its manifest exists (``folder``: a non-empty
            folder).
        ExportError: if ``out`` cannot be written (a file where a folder must be), the grid
            would be too large, or the data set would not fit on the disk.
        OSError: if writing fails anyway (nothing is left behind).
    """
    target, manifest = export_paths(out, fmt)
    _check_target(out, target, manifest, fmt)
    shape = image_shape(task)
    count = task.num_classes * per_class
    if fmt is ExportFormat.PNG:
        check_grid_size(task.num_classes, per_class, shape)
    else:
        _check_disk(target, task.num_classes, per_class, shape, fmt)
    target.parent.mkdir(parents=True, exist_ok=True)
    batches = _batches(task, per_class, generator)
    if fmt is ExportFormat.PNG:
        images = torch.cat([part for _, part in batches])
        save_grid(images, target, nrow=per_class)  # written beside and renamed
        shape = tuple(images.shape[1:])
        layout = "one grid row per class, top to bottom in label order"
    elif fmt is ExportFormat.NPZ:
        shape = _write_npz(batches, count, per_class, class_names, target)
        layout = "images uint8 (N, C, H, W), labels int64 (N,), class_names (classes,)"
    else:
        layout = "one folder per class (label_name/NNNNN.png) and labels.csv (file,label,class)"
    record = {
        "format": str(fmt),
        "layout": layout,
        "count": count,
        "per_class": per_class,
        "image_shape": list(shape or ()),
        "class_names": class_names,
        **provenance,
    }
    if fmt is ExportFormat.FOLDER:
        # The manifest goes in with the images, so the folder appears whole or not at all.
        _write_folder(batches, class_names, target, record)
    else:
        try:
            _write_atomically(manifest, (json.dumps(record, indent=1) + "\n").encode())
        except BaseException:
            # A data set without its manifest is no export (and would block the retry).
            target.unlink(missing_ok=True)
            raise
    return target, manifest


def _check_target(out: Path, target: Path, manifest: Path, fmt: ExportFormat) -> None:
    """Refuse, before anything is drawn, an export that would overwrite or cannot be made."""
    if fmt is ExportFormat.FOLDER:
        if target.is_dir():
            if any(target.iterdir()):
                raise ExportExistsError(
                    f"{target} is a non-empty folder; choose a new --out for the data set "
                    f"(e.g. --out {_free_name(out, fmt)})"
                )
            return
        if target.exists():
            raise ExportExistsError(
                f"{target} is a file; --format folder writes a folder: choose a new --out "
                f"(e.g. --out {_free_name(out, fmt)})"
            )
        check_parent(target)
        return
    for path in (target, manifest):
        if path.exists():
            what = "" if path == target else " (the manifest this export would write)"
            raise ExportExistsError(
                f"{path}{what} exists and an export never overwrites: choose another "
                f"--out (e.g. --out {_free_name(out, fmt)}) or move it away"
            )
    check_parent(target)


def _free_name(out: Path, fmt: ExportFormat) -> Path:
    """``out`` with the first ``-N`` suffix whose data set and manifest are both free."""
    stem = out.with_suffix("") if fmt is not ExportFormat.FOLDER else out
    for index in range(2, 10_000):
        candidate = stem.with_name(f"{stem.name}-{index}")
        if not any(path.exists() for path in export_paths(candidate, fmt)):
            return candidate
    return stem.with_name(f"{stem.name}-new")


def _check_disk(
    target: Path, num_classes: int, per_class: int, shape: tuple[int, ...] | None, fmt: ExportFormat
) -> None:
    """Refuse an export whose pixels (uncompressed) would not fit on the disk, rather than
    fail hours later; the batches already keep memory bounded."""
    if shape is None:
        return
    # A folder holds a file per image, and a tiny PNG still takes a whole block; an npz
    # holds the pixels and an int64 label per image.
    pixels = math.prod(shape)
    per_image = max(pixels, MIN_FILE_BYTES) if fmt is ExportFormat.FOLDER else pixels + 8
    need = num_classes * per_class * per_image
    ancestor = _nearest_existing(target.parent).resolve()
    free = shutil.disk_usage(ancestor).free
    if need <= free:
        return
    most = free // (num_classes * per_image)
    raise ExportError(
        f"{num_classes * per_class:,} images of {'x'.join(map(str, shape))} need about "
        f"{_human(need)} on disk (uncompressed) and {ancestor} has {_human(free)} free: "
        f"give --per-class {most:,} or fewer, or an --out on a larger disk"
    )


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` for a relative path)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _human(size: int) -> str:
    """``size`` bytes in decimal units, as disks are sold and ``df -H`` shows them."""
    value, unit = float(size), "bytes"
    for bigger in ("KB", "MB", "GB", "TB", "PB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{size:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"


def _batches(
    task: Any, per_class: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(labels, uint8 images)`` in label order, ``BATCH`` at a time (the draws one call
    per ``BATCH`` labels makes); labels are computed per batch, never all at once."""
    total = task.num_classes * per_class
    for start in range(0, total, BATCH):
        labels = torch.arange(start, min(start + BATCH, total), dtype=torch.int64) // per_class
        yield labels, _to_uint8(task.sample(labels, generator))


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    pixels = torch.nan_to_num(images.detach().cpu().float(), nan=0.0).clamp(0.0, 1.0)
    return pixels.mul(255.0).round().to(torch.uint8)


def _write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or does not exist (written beside, then renamed)."""
    partial = _partial_file(path)
    try:
        partial.write_bytes(data)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _partial_file(path: Path) -> Path:
    """A hidden file beside ``path`` to write before renaming it to ``path`` (the
    process id keeps two exports apart; made as any file, so the umask applies)."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def _write_npz(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    count: int,
    per_class: int,
    class_names: list[str],
    target: Path,
) -> tuple[int, ...]:
    """The arrays ``np.savez_compressed`` would write, streamed batch by batch into the
    archive (``np.load`` reads it as any npz); returns the image shape."""
    partial = _partial_file(target)
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            _, first = next(batches)
            shape = tuple(first.shape[1:])
            # force_zip64: the entry's size is not known up front and may pass 4 GB.
            with archive.open("images.npy", "w", force_zip64=True) as entry:
                _npy_header(entry, np.dtype(np.uint8), (count, *shape))
                entry.write(first.numpy().tobytes())
                for _, images in batches:
                    entry.write(images.numpy().tobytes())
            with archive.open("labels.npy", "w", force_zip64=True) as entry:
                _npy_header(entry, np.dtype(np.int64), (count,))
                for start in range(0, count, BATCH):
                    stop = min(start + BATCH, count)
                    entry.write((np.arange(start, stop, dtype=np.int64) // per_class).tobytes())
            with archive.open("class_names.npy", "w") as entry:
                np.lib.format.write_array(entry, np.array(class_names), allow_pickle=False)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return shape


def _npy_header(entry: IO[bytes], dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(entry, header)


def _write_folder(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    class_names: list[str],
    root: Path,
    record: dict[str, Any],
) -> None:
    """The folder layout, built beside ``root`` and renamed to it once whole."""
    partial = _partial_file(root)
    partial.mkdir()
    try:
        folders = [f"{i}_{_safe(name)}" for i, name in enumerate(class_names)]
        for folder in folders:
            (partial / folder).mkdir()
        counts = [0] * len(class_names)
        shape: tuple[int, ...] = ()
        with (partial / "labels.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "label", "class"])
            for labels, images in batches:
                shape = tuple(images.shape[1:])
                for image, label in zip(images, labels.tolist(), strict=True):
                    relative = f"{folders[label]}/{counts[label]:05d}.png"
                    counts[label] += 1
                    array = image.permute(1, 2, 0).numpy()
                    picture = array[:, :, 0] if array.shape[2] == 1 else array
                    Image.fromarray(picture).save(partial / relative)
                    writer.writerow((relative, label, class_names[label]))
        record = {**record, "image_shape": list(shape)}
        (partial / "manifest.json").write_text(json.dumps(record, indent=1) + "\n")
        if root.is_dir():
            root.rmdir()  # empty (checked before): the finished folder takes its place
        partial.replace(root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _safe(name: str) -> str:
    """A class name as a folder name: letters, digits, ``.-_`` kept, the rest ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"
