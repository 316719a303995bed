"""Real text corpora: where they live, how to check them, how they split into themes.

A ``TextSource`` is a corpus that reaches these machines as Debian packages
(DATA.md "Text"). It searches ``<data_dir>/<name>`` and then its system
folder, checks the sha256 of every unit of its canonical content, and says
which commands provide it when it is missing. ``load`` returns the documents
grouped by theme, the topic a text federation gives each client whole:

- ``fortunes``: a theme per fortune file (art, computers, ...), a document per fortune;
- ``kjv``: a theme per book of the King James Bible, a document per verse;
- ``python-docs``: a theme per top folder of the Python 3.11 documentation
  sources (library, c-api, ...; ``top-level`` for the files beside them), a
  document per ``.rst.txt`` file.

A unit is what the manifest records one sha256 for, so a mismatch names it:
a fortune file, ``kjv.txt`` (the Bible as ``bible -f`` prints it, a verse per
line), or a documentation folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from fedgen.errors import ChecksumError, DataMissingError
from fedgen.registry import TEXT_SOURCES

# (path relative to the source folder, content), sorted by path.
UnitFiles = list[tuple[str, bytes]]

# The rule of fedgen.data.sources.resolve_data_dir. It cannot be imported from
# there: sources.py imports this module to list the text sources, and sibling
# modules may not import each other in a cycle.
_DATA_DIR_ENV = "FEDGEN_DATA_DIR"
_DEFAULT_DATA_DIR = "~/.cache/fedgen/data"


def _data_root(data_dir: Path | str | None) -> Path:
    if data_dir is None:
        data_dir = os.environ.get(_DATA_DIR_ENV) or _DEFAULT_DATA_DIR
    return Path(data_dir).expanduser().resolve()


def unit_sha256(files: UnitFiles) -> str:
    """sha256 over a unit's files in path order: path, NUL, 8-byte length, bytes."""
    digest = hashlib.sha256()
    for path, content in sorted(files):
        digest.update(path.encode() + b"\0" + len(content).to_bytes(8, "little"))
        digest.update(content)
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class TextSource:
    """A real text corpus: its units' sha256, where it is looked for, how it is read.

    ``has_unit(folder, unit)`` says cheaply whether a folder holds a unit,
    ``read_unit`` reads its files, and ``parse`` turns the verified units into
    documents grouped by theme. ``manual`` is a shell command, with ``{folder}``
    for the target, that fills a data-dir folder without root. ``separator``
    follows every document when a client's documents are joined into one text.
    """

    name: str
    description: str
    packages: tuple[str, ...]
    versions: str
    manifest: Mapping[str, str]
    has_unit: Callable[[Path, str], bool]
    read_unit: Callable[[Path, str], UnitFiles]
    parse: Callable[[Mapping[str, UnitFiles]], dict[str, list[str]]]
    manual: str
    system_dirs: tuple[Path, ...] = ()
    separator: str = ""

    @property
    def sha256(self) -> str:
        """sha256 of the whole corpus: over the sorted lines ``<unit> <unit sha256>``."""
        lines = "".join(f"{unit} {sha}\n" for unit, sha in sorted(self.manifest.items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def search_dirs(self, data_dir: Path | str | None = None) -> list[Path]:
        """Folders searched, in order: ``<data_dir>/<name>``, then the system ones."""
        return [_data_root(data_dir) / self.name, *self.system_dirs]

    def locate(self, data_dir: Path | str | None = None) -> Path | None:
        """The first searched folder that holds every unit, or ``None`` (nothing is read)."""
        for folder in self.search_dirs(data_dir):
            if all(self.has_unit(folder, unit) for unit in self.manifest):
                return folder
        return None

    def provide_commands(self, data_dir: Path | str | None = None) -> str:
        """The exact shell commands that make this corpus present, one alternative per block."""
        folder = _data_root(data_dir) / self.name
        return (
            f"sudo apt-get install {' '.join(self.packages)}\n--- or, without root ---\n"
            + self.manual.format(folder=shlex.quote(str(folder)))
        )

    def load(self, data_dir: Path | str | None = None) -> dict[str, list[str]]:
        """Every document, grouped by theme (theme -> documents), in a fixed order.

        Raises ``DataMissingError`` (the folders searched and the apt command)
        or ``ChecksumError`` (each unit that differs and how to reinstall).
        """
        folder = self.locate(data_dir)
        if folder is None:
            raise DataMissingError(self._missing_message(data_dir))
        units = {unit: self.read_unit(folder, unit) for unit in sorted(self.manifest)}
        problems = [
            f"{unit}: sha256 {actual}, expected {self.manifest[unit]}"
            for unit, files in units.items()
            if (actual := unit_sha256(files)) != self.manifest[unit]
        ]
        if problems:
            raise ChecksumError(
                f"{self.name} in {folder} differs from the corpus fedgen expects "
                f"(Debian {self.versions}); it is corrupted or another version:\n  "
                + "\n  ".join(problems)
                + f"\n{self._reinstall(folder, data_dir)}"
            )
        return self.parse(units)

    def _reinstall(self, folder: Path, data_dir: Path | str | None) -> str:
        if folder in self.system_dirs:
            packages = " ".join(self.packages)
            return f"Reinstall the packages: sudo apt-get install --reinstall {packages}"
        return (
            f"Delete the copy (rm -r {folder}) and provide it again with:\n"
            + self.manual.format(folder=shlex.quote(str(_data_root(data_dir) / self.name)))
        )

    def _missing_message(self, data_dir: Path | str | None) -> str:
        lines = []
        for folder in self.search_dirs(data_dir):
            absent = [unit for unit in sorted(self.manifest) if not self.has_unit(folder, unit)]
            if len(absent) < len(self.manifest):
                more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
                lines.append(f"  {folder} (lacks {', '.join(absent[:5])}{more})")
            else:
                lines.append(f"  {folder}")
        return (
            f"{self.name} text not found (Debian {', '.join(self.packages)}).\nSearched:\n"
            + "\n".join(lines)
            + f"\nProvide it with one of:\n{self.provide_commands(data_dir)}\n"
            f"(The data directory is the data_dir argument, else ${_DATA_DIR_ENV}, "
            f"else {_DEFAULT_DATA_DIR}.)"
        )


def get_text_source(name: str) -> TextSource:
    """The registered text source called ``name``; ``ConfigError`` lists the valid names."""
    return TEXT_SOURCES.get(name)


def _lines(content: bytes) -> list[str]:
    text = content.decode("utf-8")
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


# --- fortunes: /usr/share/games/fortunes/<theme>, fortunes separated by lines "%" ---


def _fortune_file(folder: Path, unit: str) -> bool:
    # The .u8 names beside each file are symlinks to it; .dat files are strfile indexes.
    path = folder / unit
    return path.is_file() and not path.is_symlink()


def _read_fortune_file(folder: Path, unit: str) -> UnitFiles:
    return [(unit, (folder / unit).read_bytes())]


def _parse_fortunes(units: Mapping[str, UnitFiles]) -> dict[str, list[str]]:
    themes: dict[str, list[str]] = {}
    for theme, files in units.items():
        docs, lines = [], []
        # The last fortune of some files has no closing "%".
        for line in [*_lines(files[0][1]), "%"]:
            if line != "%":
                lines.append(line)
                continue
            if "".join(lines).strip():
                docs.append("\n".join(lines) + "\n")
            lines = []
        themes[theme] = docs
    return themes


# --- kjv: `bible -f` prints one verse per line, "Ge1:1 In the beginning ..." ---

_BOOKS = {
    "Ge": "Genesis", "Exo": "Exodus", "Lev": "Leviticus", "Num": "Numbers",
    "Deu": "Deuteronomy", "Josh": "Joshua", "Jdgs": "Judges", "Ruth": "Ruth",
    "1Sm": "1 Samuel", "2Sm": "2 Samuel", "1Ki": "1 Kings", "2Ki": "2 Kings",
    "1Chr": "1 Chronicles", "2Chr": "2 Chronicles", "Ezra": "Ezra", "Neh": "Nehemiah",
    "Est": "Esther", "Job": "Job", "Psa": "Psalms", "Prv": "Proverbs",
    "Eccl": "Ecclesiastes", "SSol": "Song of Solomon", "Isa": "Isaiah", "Jer": "Jeremiah",
    "Lam": "Lamentations", "Eze": "Ezekiel", "Dan": "Daniel", "Hos": "Hosea",
    "Joel": "Joel", "Amos": "Amos", "Obad": "Obadiah", "Jonah": "Jonah",
    "Mic": "Micah", "Nahum": "Nahum", "Hab": "Habakkuk", "Zep": "Zephaniah",
    "Hag": "Haggai", "Zec": "Zechariah", "Mal": "Malachi", "Mat": "Matthew",
    "Mark": "Mark", "Luke": "Luke", "John": "John", "Acts": "Acts",
    "Rom": "Romans", "1Cor": "1 Corinthians", "2Cor": "2 Corinthians", "Gal": "Galatians",
    "Eph": "Ephesians", "Phi": "Philippians", "Col": "Colossians", "1Th": "1 Thessalonians",
    "2Th": "2 Thessalonians", "1Tim": "1 Timothy", "2Tim": "2 Timothy", "Titus": "Titus",
    "Phmn": "Philemon", "Heb": "Hebrews", "Jas": "James", "1Pet": "1 Peter",
    "2Pet": "2 Peter", "1Jn": "1 John", "2Jn": "2 John", "3Jn": "3 John",
    "Jude": "Jude", "Rev": "Revelation",
}  # fmt: skip
_VERSE = re.compile(r"(\d?[A-Za-z]+)(\d+):(\d+) (.*)")
_KJV_TEXT = "kjv.txt"


def _bible_program() -> str | None:
    return shutil.which("bible") or shutil.which("bible", path="/usr/bin")


def _kjv_present(folder: Path, unit: str) -> bool:
    if (folder / _KJV_TEXT).is_file():
        return True
    return (folder / "bible.data").is_file() and _bible_program() is not None


def _read_kjv(folder: Path, unit: str) -> UnitFiles:
    if (folder / _KJV_TEXT).is_file():
        return [(_KJV_TEXT, (folder / _KJV_TEXT).read_bytes())]
    # -f turns pretty-printing off: "<book><chapter>:<verse> <text>" per line and no
    # wrapping, so $COLUMNS cannot change the text; -p keeps it from reading ./bible.data.
    command = [cast(str, _bible_program()), "-f", "-p", str(folder), "gen1:1-rev22:21"]
    done = subprocess.run(command, cwd=folder, capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        raise DataMissingError(
            f"{' '.join(command)} failed ({done.returncode}): "
            f"{done.stderr.decode(errors='replace').strip()}; reinstall it: "
            "sudo apt-get install --reinstall bible-kjv bible-kjv-text"
        )
    return [(_KJV_TEXT, done.stdout)]


def _parse_kjv(units: Mapping[str, UnitFiles]) -> dict[str, list[str]]:
    books: dict[str, list[str]] = {}
    for number, line in enumerate(_lines(units[_KJV_TEXT][0][1]), start=1):
        match = _VERSE.fullmatch(line)
        if match is None or match[1] not in _BOOKS:
            raise ValueError(f"{_KJV_TEXT} line {number} is not '<book><c>:<v> <text>': {line!r}")
        books.setdefault(_BOOKS[match[1]], []).append(match[4] + "\n")
    return books


# --- python-docs: <_sources>/<theme>/**/*.rst.txt, and top-level *.rst.txt ---

_TOP_LEVEL = "top-level"


def _docs_files(folder: Path, unit: str) -> list[Path]:
    found = folder.glob("*.rst.txt") if unit == _TOP_LEVEL else (folder / unit).rglob("*.rst.txt")
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def _docs_present(folder: Path, unit: str) -> bool:
    if unit == _TOP_LEVEL:
        return folder.is_dir() and bool(_docs_files(folder, unit))
    return (folder / unit).is_dir()


def _read_docs(folder: Path, unit: str) -> UnitFiles:
    return [(p.relative_to(folder).as_posix(), p.read_bytes()) for p in _docs_files(folder, unit)]


def _parse_docs(units: Mapping[str, UnitFiles]) -> dict[str, list[str]]:
    themes = {}
    for theme, files in units.items():
        texts = [content.decode("utf-8") for _, content in files]
        themes[theme] = [t if t.endswith("\n") else t + "\n" for t in texts]
    return themes


def _apt_download(packages: str, folder_commands: str) -> str:
    """Shell commands that unpack Debian packages in a temporary folder, then fill {folder}."""
    return (
        f'cd "$(mktemp -d)" && apt-get download {packages} && '
        'for deb in *.deb; do dpkg-deb -x "$deb" .; done && mkdir -p {folder} && ' + folder_commands
    )


FORTUNES = TextSource(
    name="fortunes",
    description="fortune-mod's quotes (Debian fortunes, fortunes-min): 43 files by theme",
    packages=("fortunes", "fortunes-min"),
    versions="fortunes 1:1.99.1-7.3, fortunes-min 1:1.99.1-7.3",
    manifest={
        "art": "e7a3baa5ee52646950067c80871fa1930215a474e034572126d92afca708a39e",
        "ascii-art": "849e5d0352ea43babf721ed5c2befa57757ef1ac2f6ff0d12fc17f57248f7b22",
        "computers": "9c48bfdf03f51daee06f228cd7f25e8d319834a6876969fbfcf6b57ed8d5260d",
        "cookie": "ce6815eec61b2ab928e759f386447bf2c4c1d0946b8e9380cccbabe596ea1b1d",
        "debian": "fc3da9b663aec3c90603158483b79fc8dd9090097537c8460f1967896613d9c1",
        "definitions": "d3e8ca6e889fffb384849e1058edf76dcb97badf8e51c9087f2da3a98f524449",
        "disclaimer": "274f837dd3ecb966b9240702d6394d741e3d62257d6bdfb5f8c0a3ff2f3d9752",
        "drugs": "c7f72c330c190fe16dc3085f107f8f175a9fc622c726f407d288a4b99589ea2b",
        "education": "bc32eea001d6a295066ba21504d6fbe1679fbd4ddcbbe5cc978e6cd495b2c522",
        "ethnic": "e8eb9a1360dfa4b8fda6020ce274bb0ba47ca856df09ef2c7ac9b110cac6056b",
        "food": "db219b3973da7e53ad05df88bf7b8a25d40f141f033223fa4e649b9d825c731c",
        "fortunes": "9b380ce2e3b104a113ca2fe67cb2dd3e19c47386abb664ebe4eb54e30bdaba3e",
        "goedel": "6419c039f4ddd68c79b25e9fd19c4a3c458652979b2de52f6d9614afae28bd8d",
        "humorists": "00cc960d77caf47c95f8f25f82def8057f3fd00e9814ffa0a81368941b8e3719",
        "kids": "0b6baf80f2cc7bba58bb24eed9dba87ea08942c465b96b42f644b1c0807a1558",
        "knghtbrd": "bae62ab2f0b4f4b1a8bc0c4d14ff76af614731cfdcc18549bbcd653a38d2870a",
        "law": "e0348ba500b2be709f081ffb71d22622e13a6d31691e969cca3cc9cdcab7769c",
        "linux": "87e7a3521ff8a922d5e5c70c85b777e157cee22c3e8a35b0d46051c423910763",
        "linuxcookie": "0fcedb1b210ae02a55658476ee58347b4bcef77a49cf0031c3a05425e0a44d9d",
        "literature": "222b8c5c457fdedcb53ab8294d33686354848cdea74ddeaf7f2e7c0683d17fd3",
        "love": "0301eecc9d8e54d82b2326be3e4eb88b13c9e49defe3b83631fc5c6225d16ee4",
        "magic": "05fb8ddcc5ae21dbd675f51e3735b93800591a694b53f15449f5f1d09b1596a4",
        "medicine": "76d396c22367c8727d09aeb50106526ab1737adf3fc2f3624a08c570fa39f2de",
        "men-women": "483f2724cd0f7bea6a51d4542c1cf5d7a57e6ec5bb4e4cafbd7e9deefc6486ed",
        "miscellaneous": "d32e3aa8c6c2d094fa970b79004f0f4d55acb531ce82a43b4905d3384691f368",
        "news": "7ffc98601b17ca34bb3e0808b388a57bdeabceeab3ee92b70a91efd6db50ce77",
        "paradoxum": "81c8fa6d7c26873d4e7a6ef9379a17d503ef977a597bd31071fa22dc0f4952ae",
        "people": "aa912c185ada390a87fd8be8a9d80def65a7e6d1e433ca143d5c3911da437801",
        "perl": "75b832d6ab9d70a32505bc25fe230897452c7ea86abcbe17557f4801f8ec0df7",
        "pets": "e021e8e03b1eaf5a34edfe6d98762bcb8f0d446162125ad736dd314280f11060",
        "platitudes": "7c4205b24b35e4c2886d82b309e534f2b74e03359fc6134c62ce4a977f7e1e5f",
        "politics": "b3b0dba0a58fb4752df067873e1b98f8fd734d083d29f78fb8ec80f0e5a7cac8",
        "pratchett": "764281c39dbfe5500cd37a66a227b4f5b7861e69d530903e0430618ec4f5a155",
        "riddles": "777c0c3c77007abd732b9dec3710dd40aa0644b7737a05798c396a9b1f8e5923",
        "science": "b02f34f37613b5a3cb0dabd59c20074d9c39d92e6d98cb3d54f1aac97d5c3e82",
        "songs-poems": "d643f0f75468693df08eba6c35f9a37a6b9fea9c9332e13a4c7b8619f564c63a",
        "sports": "e98deceecb3ca8f713e589623aa4e497ccc71ccd6d33d7fcaab7d2b7397c011f",
        "startrek": "98ee2ed7dc6ae7033e7165476326af9af112d81cd0fa93cdb50a00e3dc240e91",
        "tao": "d5b5830b4e65075e844493c2e000a713ee46ce3b4a3153cd76a0129c3b0ceb02",
        "translate-me": "3edc0f9998e181f1ee3aae02579339c00a2b54902d5fba74eb167809f90dee20",
        "wisdom": "2d17d5a829e35e4d8b4012e69208342d1ce545799bcf7a9451b61ae2f434a281",
        "work": "237717d5b76b19315f11d8022aefa37a612cdf692463da9a40d2dee9f8cb446e",
        "zippy": "9aaadcd375d37781656645e2020142c8404115ecc482e3ce053fc673316d3096",
    },
    has_unit=_fortune_file,
    read_unit=_read_fortune_file,
    parse=_parse_fortunes,
    manual=_apt_download(
        "fortunes fortunes-min",
        # -type f leaves out the .u8 symlinks.
        'find usr/share/games/fortunes -maxdepth 1 -type f ! -name "*.dat" '
        "-exec cp -t {folder} {{}} +",
    ),
    system_dirs=(Path("/usr/share/games/fortunes"),),
    separator="%\n",
)

KJV = TextSource(
    name="kjv",
    description="the King James Bible (Debian bible-kjv, bible-kjv-text): 66 books",
    packages=("bible-kjv", "bible-kjv-text"),
    versions="bible-kjv 4.38, bible-kjv-text 4.38",
    manifest={_KJV_TEXT: "7dfb172b6cd95fab434a011689b34d11f9645dbc0491d0038374f972f46104f9"},
    has_unit=_kjv_present,
    read_unit=_read_kjv,
    parse=_parse_kjv,
    manual=_apt_download(
        "bible-kjv bible-kjv-text",
        './usr/bin/bible -f -p "$PWD/usr/lib" gen1:1-rev22:21 > {folder}/kjv.txt',
    ),
    system_dirs=(Path("/usr/lib"),),
)

PYTHON_DOCS = TextSource(
    name="python-docs",
    description="Python 3.11 documentation sources (Debian python3.11-doc): 15 folders",
    packages=("python3.11-doc",),
    versions="python3.11-doc 3.11.2-6+deb12u9",
    manifest={
        "c-api": "011800b70cadc6415f2fb29d43ae6971f73ef6e61a2c463a7e0b920390b596d1",
        "distributing": "28d66ede5faad96cc49b88a58fb4d796d209a0319dc22083c54608e3e4ab94d2",
        "distutils": "cad50d23f0945f8905910d1a983fe156b749dede54b997cb20984a3803e5b292",
        "extending": "41f4295b0105eaf1ae886ee30fb302e12db263658db534046f123b2ab8a611d6",
        "faq": "155fce035dd2d31067f186c9b611ba8d6732ec9ef7bbcaedbd4cdd93a4048714",
        "howto": "bf241896910827f72428258198d4f9c567dfbaf2b6edcf804560fc3a66c285a1",
        "includes": "0ca08ef20e9835b208e0a723e7db68118c84ce369850db78d87796a68d1e3d51",
        "install": "14a112154ef137a718942bac99702fbcfdba5d42ddc920c5f19626c4659aee9c",
        "installing": "21225f2a6b2c9d594ff99fc5b7cdec1584987ad8c9353127329455850646afe8",
        "library": "7aefab98987183bd1836cddb55281b9d49ccead16472330de2f058e8c57c02b5",
        "reference": "1c15d082bcd2133a64995deb3064b8944cbd54b8e33b573795cb111b8307bdff",
        "top-level": "ab286577339e0e4bbac9893cd4e4bcead1e2e172f341246a198e99eaf2f4e8ed",
        "tutorial": "c2095561c6e20634aa66a44e704beb78dab351edb0e268ff66d3a577a5ff771e",
        "using": "70e4d614eae2e84387f93461762dfb058ed35027142d6da9869dbe34f1f05424",
        "whatsnew": "efae137d2771dc86e09ef36eb277e4554c814c6d44a53851f83e22949e0fff37",
    },
    has_unit=_docs_present,
    read_unit=_read_docs,
    parse=_parse_docs,
    manual=_apt_download(
        "python3.11-doc", "cp -r usr/share/doc/python3.11/html/_sources/. {folder}/"
    ),
    system_dirs=(Path("/usr/share/doc/python3.11/html/_sources"),),
)

for _source in (FORTUNES, KJV, PYTHON_DOCS):
    TEXT_SOURCES.register(_source.name)(_source)
