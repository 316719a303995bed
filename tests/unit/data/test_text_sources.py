"""Text sources on the real Debian corpora: contents, checksums, copies, missing packages."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedgen.data.sources import source_statuses
from fedgen.data.text_sources import (
    FORTUNES,
    KJV,
    PYTHON_DOCS,
    TEXT_SOURCES,
    TextSource,
    get_text_source,
    unit_sha256,
)
from fedgen.errors import ChecksumError, ConfigError, DataMissingError

FORTUNE_DIR = Path("/usr/share/games/fortunes")


def _copy_fortunes(target: Path) -> Path:
    """The fortune files (no .dat indexes, no .u8 symlinks) copied into ``target/fortunes``."""
    folder = target / "fortunes"
    folder.mkdir(parents=True)
    for name in FORTUNES.manifest:
        shutil.copy(FORTUNE_DIR / name, folder / name)
    return folder


def _bible_text() -> bytes:
    return subprocess.run(
        ["bible", "-f", "-p", "/usr/lib", "gen1:1-rev22:21"],
        cwd="/",
        capture_output=True,
        check=True,
    ).stdout


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("source", "themes", "documents", "utf8_bytes"),
    [
        (FORTUNES, 43, 15_217, 2_546_242),
        (KJV, 66, 31_102, 4_137_850),
        (PYTHON_DOCS, 15, 497, 11_048_275),
    ],
    ids=lambda v: v.name if isinstance(v, TextSource) else None,
)
def test_sources_load_verified_from_their_packages(
    source: TextSource, themes: int, documents: int, utf8_bytes: int, tmp_path: Path
) -> None:
    # Execute: an empty data dir, so the system folder of the packages is used.
    loaded = source.load(tmp_path)

    # Assert
    assert source.locate(tmp_path) == source.system_dirs[0]
    assert len(loaded) == themes
    assert sum(len(docs) for docs in loaded.values()) == documents
    assert sum(len(d.encode()) for docs in loaded.values() for d in docs) == utf8_bytes
    assert all(
        docs and all(d.endswith("\n") and d.strip() for d in docs) for docs in loaded.values()
    )
    assert source.load(tmp_path) == loaded


def test_sha256_is_over_sorted_paths_lengths_and_bytes() -> None:
    files = [("b.txt", b"second"), ("a.txt", b"first")]
    expected = hashlib.sha256(
        b"a.txt\0" + (5).to_bytes(8, "little") + b"first" + b"b.txt\0" + (6).to_bytes(8, "little")
    )
    expected.update(b"second")
    assert unit_sha256(files) == expected.hexdigest()
    lines = "".join(f"{u} {s}\n" for u, s in sorted(KJV.manifest.items())).encode()
    assert KJV.sha256 == hashlib.sha256(lines).hexdigest()


def test_fortunes_are_the_files_split_on_percent_lines() -> None:
    loaded = FORTUNES.load()
    assert list(loaded) == sorted(loaded)
    for theme, docs in loaded.items():
        text = (FORTUNE_DIR / theme).read_text(encoding="utf-8")
        # A slower reference: close the last fortune, split on "%" lines, drop blank ones.
        closed = text if text.endswith("%\n") else text + "%\n"
        expected = [c for c in re.split(r"(?m)^%\n", closed) if c.strip()]
        assert docs == expected, theme
    assert len(loaded["pratchett"]) == 2 and "Night Watch" in loaded["pratchett"][0]


def test_kjv_is_a_verse_per_document_grouped_by_book() -> None:
    loaded = KJV.load()
    assert list(loaded)[:2] == ["Genesis", "Exodus"] and list(loaded)[-1] == "Revelation"
    assert loaded["Genesis"][0] == "In the beginning God created the heaven and the earth.\n"
    assert len(loaded["Psalms"]) == 2461 and len(loaded["Obadiah"]) == 21
    plain = _bible_text().decode()
    assert "".join(d for docs in loaded.values() for d in docs) == re.sub(
        r"(?m)^\w+?\d+:\d+ ", "", plain
    )


def test_python_docs_themes_are_top_folders() -> None:
    loaded = PYTHON_DOCS.load()
    assert len(loaded["library"]) == 317 and len(loaded["top-level"]) == 6
    root = PYTHON_DOCS.system_dirs[0]
    assert loaded["tutorial"][0] == (root / "tutorial" / "appendix.rst.txt").read_text()


def test_copy_in_data_dir_is_used_and_a_changed_byte_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a full copy in $FEDGEN_DATA_DIR/fortunes takes precedence.
    folder = _copy_fortunes(tmp_path)
    monkeypatch.setenv("FEDGEN_DATA_DIR", str(tmp_path))
    assert FORTUNES.locate() == folder.resolve()
    assert FORTUNES.load() == FORTUNES.load(FORTUNE_DIR.parent / "nowhere")

    # Execute
    _flip_byte(folder / "zippy")
    with pytest.raises(ChecksumError) as caught:
        FORTUNES.load()

    # Assert: the unit, the expected digest, and how to provide the copy again.
    message = str(caught.value)
    assert f"zippy: sha256 {unit_sha256(FORTUNES.read_unit(folder, 'zippy'))}" in message
    assert f"expected {FORTUNES.manifest['zippy']}" in message
    assert "art:" not in message
    assert f"rm -r {folder.resolve()}" in message
    assert "apt-get download fortunes fortunes-min" in message


def test_changed_kjv_text_is_named(tmp_path: Path) -> None:
    (tmp_path / "kjv").mkdir()
    text = tmp_path / "kjv" / "kjv.txt"
    text.write_bytes(_bible_text())
    assert KJV.locate(tmp_path) == tmp_path.resolve() / "kjv"
    assert KJV.load(tmp_path) == KJV.load()

    text.write_bytes(_bible_text().replace(b"beginning", b"Beginning", 1))
    with pytest.raises(ChecksumError, match=r"kjv\.txt: sha256 [0-9a-f]{64}, expected"):
        KJV.load(tmp_path)


def test_changed_system_folder_says_reinstall(tmp_path: Path) -> None:
    folder = _copy_fortunes(tmp_path)
    (folder / "art").write_bytes((folder / "art").read_bytes() + b"extra\n%\n")
    system_copy = dataclasses.replace(FORTUNES, system_dirs=(folder,))
    with pytest.raises(ChecksumError, match="apt-get install --reinstall fortunes fortunes-min"):
        system_copy.load(tmp_path / "empty")


@pytest.mark.parametrize(
    ("source", "apt"),
    [
        (FORTUNES, "sudo apt-get install fortunes fortunes-min"),
        (KJV, "sudo apt-get install bible-kjv bible-kjv-text"),
        (PYTHON_DOCS, "sudo apt-get install python3.11-doc"),
    ],
    ids=["fortunes", "kjv", "python-docs"],
)
def test_missing_corpus_names_the_apt_command(source: TextSource, apt: str, tmp_path: Path) -> None:
    # The real system folders exist on this machine; point them somewhere empty.
    absent = dataclasses.replace(source, system_dirs=(tmp_path / "system",))
    assert absent.locate(tmp_path) is None
    with pytest.raises(DataMissingError) as caught:
        absent.load(tmp_path)
    message = str(caught.value)
    assert apt in message
    assert str(tmp_path.resolve() / source.name) in message
    assert str(tmp_path / "system") in message
    assert f"apt-get download {apt.removeprefix('sudo apt-get install ')}" in message


def test_partial_copy_is_missing_and_names_what_it_lacks(tmp_path: Path) -> None:
    folder = _copy_fortunes(tmp_path)
    (folder / "art").unlink()
    (folder / "zippy").unlink()
    only_copy = dataclasses.replace(FORTUNES, system_dirs=())
    with pytest.raises(DataMissingError, match=r"lacks art, zippy\)"):
        only_copy.load(tmp_path)
    # With the system folder searched after it, the incomplete copy is passed over.
    assert FORTUNES.locate(tmp_path) == FORTUNE_DIR


def test_registry_and_fedgen_data_list_the_text_sources(tmp_path: Path) -> None:
    assert TEXT_SOURCES.names() == ["fortunes", "kjv", "python-docs"]
    assert get_text_source("kjv") is KJV
    with pytest.raises(ConfigError, match="fortunes, kjv, python-docs"):
        get_text_source("shakespeare")
    statuses = {s.name: s for s in source_statuses(tmp_path)}
    for source in (FORTUNES, KJV, PYTHON_DOCS):
        status = statuses[source.name]
        assert status.present and status.found_at == source.system_dirs[0]
        assert status.searched == [tmp_path.resolve() / source.name, *source.system_dirs]
        assert source.packages[0] in status.provide
    assert [n for n in statuses if n not in TEXT_SOURCES] == [
        "breast_cancer",
        "digits",
        "fair",
        "fashion-mnist",
        "heart_disease",
        "kmnist",
        "mnist",
        "randhie",
        "titanic",
    ]
