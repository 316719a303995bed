"""The HTML run report, rendered from run folders with real content and from broken ones."""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedgen.report import format_number, save_grid, write_report

FASHION_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
SAMPLE_ROUNDS = [2, 4, 5]
PER_CLASS = 6


class Page(HTMLParser):
    """Every start tag with its attributes, and the visible text, of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def real_images(count: int) -> torch.Tensor:
    """``count`` real Fashion-MNIST test images, or 8x8 digits, as (count, 1, H, W) floats."""
    if FASHION_IMAGES.exists():
        with gzip.open(FASHION_IMAGES) as handle:
            raw = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
        return torch.from_numpy(raw[:count].copy()).unsqueeze(1).float().div(255.0)
    datasets = pytest.importorskip("sklearn.datasets", reason="needs Fashion-MNIST or sklearn")
    digits = datasets.load_digits().images[:count] / 16.0
    return torch.from_numpy(digits).unsqueeze(1).float()


def write_metrics(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_run(run_dir: Path) -> dict:
    """A complete run folder of five rounds; returns what was written, for the asserts."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        "name: fashion-gan-dirichlet\nseed: 7\ntask:\n  name: gan\n  latent_dim: 64\n"
        "federation:\n  rounds: 5\n  clients_per_round: 4\n"
    )
    rows = []
    for r in range(1, 6):
        row = {
            "round": r,
            "clients": 4,
            "failures": int(r == 3),
            "examples": 2400 + 10 * r,
            "bytes_up": 1_250_000 + 50_000 * r,
            "bytes_down": 1_300_000,
            "seconds": 3.5 + 0.1 * r,
            "loss/generator": 2.0 / r,
            "loss/discriminator": 0.6 + 0.01 * r,
        }
        if r in SAMPLE_ROUNDS:
            row["frechet_distance"] = 90.0 / r
            row["kid"] = 0.05 / r
        if r == 3:
            row["failed_clients"] = [3]
        rows.append(row)
    write_metrics(run_dir / "metrics.jsonl", rows)
    summary = {
        "tstr_accuracy": 0.78125,
        "frechet_distance": 18.0,
        "kid": 0.01,
        "rounds": 5,
        "seconds": 19.25,
        "descriptions": {
            "tstr_accuracy": "classifier trained on 10k synthetic, tested on the real test split",
            "frechet_distance": "5k samples vs. the real test split, fedgen feature net",
        },
        "centralized": {"tstr_accuracy": 0.84, "frechet_distance": 11.5, "kid": 0.004},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    counts = [[612, 0, 3, 40, 1], [5, 1204, 77, 0, 0], [100, 100, 100, 100, 100]]
    partition = {
        "num_clients": 3,
        "class_names": CLASS_NAMES,
        "domain_names": ["fashion", "digits"],
        "counts": counts,
        "domain_counts": [[656, 0], [1000, 286], [0, 500]],
        "sizes": [sum(row) for row in counts],
    }
    (run_dir / "partition.json").write_text(json.dumps(partition))
    images = real_images(len(CLASS_NAMES) * PER_CLASS)
    for r in SAMPLE_ROUNDS:
        save_grid(images, run_dir / "samples" / f"round_{r:04d}.png", nrow=PER_CLASS)
    return {"summary": summary, "partition": partition, "tile": images.shape[-1]}


def svgs(page: str) -> list[ET.Element]:
    """Every inline <svg> in the page, parsed as XML (so each must be well-formed)."""
    return [ET.fromstring(match) for match in re.findall(r"<svg.*?</svg>", page, re.S)]


def svg_texts(element: ET.Element) -> list[str]:
    return [t.text or "" for t in element.iter("{http://www.w3.org/2000/svg}text")]


def test_full_run_renders_every_part(tmp_path):
    # Prepare
    written = make_run(tmp_path / "fashion-run")

    # Execute
    path = write_report(tmp_path / "fashion-run")

    # Assert
    assert path == tmp_path / "fashion-run" / "report.html"
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    visible = " ".join(page.text)
    assert "fashion-gan-dirichlet" in visible
    assert "incomplete" not in visible

    summary = written["summary"]
    for key, value in summary.items():
        if key in ("descriptions", "centralized"):
            continue
        assert key in visible and format_number(value) in visible, key
    for key, value in summary["centralized"].items():
        assert format_number(value) in visible, key
    for description in summary["descriptions"].values():
        assert description in visible

    images = page.all("img")
    assert len(images) == len(SAMPLE_ROUNDS)
    side = written["tile"]
    expected_size = ((PER_CLASS * (side + 2) + 2) * 2, (len(CLASS_NAMES) * (side + 2) + 2) * 2)
    for attrs in images:
        uri = attrs["src"] or ""
        assert uri.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1], validate=True))) as png:
            assert png.format == "PNG"
            assert png.size == expected_size
    # The newest grid opens the page; the earlier ones follow, newest first.
    assert "Generated samples, round 5 (the newest)" in visible
    assert text.index("(the newest)") < text.index("<svg")
    captions = re.findall(r"<figcaption><strong>(round \d+)</strong>", text)
    assert captions == ["round 4", "round 2"]

    charts = svgs(text)
    titles = [chart.get("aria-label") for chart in charts]
    # losses, two quality metrics, four bookkeeping charts, the two quality metrics
    # against cumulative bytes, two partition heat-maps; bytes_down and the number of
    # clients are constant, so the bookkeeping charts draw bytes_up and failures only
    assert titles == [
        "training loss (loss/*)",
        "frechet_distance",
        "kid",
        "MB sent per round",
        "seconds per round",
        "clients per round",
        "examples per round",
        "frechet_distance",
        "kid",
        "labels per client",
        "domains per client",
    ]
    label_map, domain_map = charts[-2], charts[-1]
    for row in written["partition"]["counts"]:
        for count in row:
            assert str(count) in svg_texts(label_map)
    assert "client 1 (n=1286)" in svg_texts(label_map)
    assert {"656", "286", "500"} <= set(svg_texts(domain_map))

    assert "client(s) [3]" in visible  # the failed client of round 3
    assert page.all("details") and "latent_dim: 64" in visible


def test_run_with_only_a_config_renders_and_says_what_is_missing(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 1\n")

    text = write_report(tmp_path).read_text(encoding="utf-8")

    visible = re.sub(r"\s+", " ", " ".join(Page(text).text))
    assert "This report is incomplete" in visible
    for name in ["metrics.jsonl", "summary.json", "partition.json", "samples/"]:
        assert f"Missing {name}" in visible
    assert "config.yaml" not in re.findall(r"Missing (\S+)", visible)
    assert "seed: 1" in visible
    assert "<img" not in text and "<svg" not in text


def test_nan_metrics_and_a_truncated_last_line_do_not_break_charts(tmp_path):
    rows = [
        {"round": 1, "loss/generator": 1.0, "frechet_distance": float("nan")},
        {"round": 2, "loss/generator": float("nan"), "frechet_distance": float("inf")},
        {"round": 3, "loss/generator": 0.5, "kid": 0.02},
    ]
    write_metrics(tmp_path / "metrics.jsonl", rows)
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"round": 4, "loss/gen')  # killed mid-write

    text = write_report(tmp_path).read_text(encoding="utf-8")

    charts = svgs(text)
    # Two finite losses make a curve; a figure with no finite value or one point does not.
    assert [chart.get("aria-label") for chart in charts] == ["training loss (loss/*)"]
    assert "frechet_distance (no finite value)" in text
    assert "kid = 0.02 (round 3 only)" in text
    assert "skipped 1 line(s)" in text
    # Without summary.json the last recorded round stands in for it.
    assert "Last recorded round" in text


def test_unreadable_inputs_become_notes_not_exceptions(tmp_path):
    (tmp_path / "summary.json").write_text("{not json")
    (tmp_path / "partition.json").write_text(json.dumps({"counts": [[1, 2], [3]]}))
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "round_0003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    text = write_report(tmp_path).read_text(encoding="utf-8")

    assert "summary.json is not valid JSON" in text
    assert "round_0003.png is not a readable PNG" in text
    assert "labels per client not shown" in text
    assert "<img" not in text


def test_many_grids_are_thinned_but_keep_the_first_and_newest(tmp_path):
    images = real_images(4)
    for r in range(1, 31):
        save_grid(images, tmp_path / "samples" / f"round_{r:04d}.png", nrow=2)

    text = write_report(tmp_path, max_sample_grids=5).read_text(encoding="utf-8")

    # The newest opens the page; the earlier grids are thinned, keeping the first.
    assert "Generated samples, round 30 (the newest)" in text
    captions = re.findall(r"<figcaption><strong>round (\d+)</strong>", text)
    assert len(captions) == 5
    assert captions[0] == "29" and captions[-1] == "1"
    assert "Showing 5 of 29 grids" in text


def test_text_from_the_run_is_escaped(tmp_path):
    (tmp_path / "config.yaml").write_text("name: <script>alert(1)</script>\n")
    write_metrics(tmp_path / "metrics.jsonl", [{"round": 1, "<b>odd</b>": 1.0}])

    text = write_report(tmp_path).read_text(encoding="utf-8")

    assert "<script>" not in text and "<b>odd" not in text
    assert "&lt;script&gt;" in text
    assert all(chart is not None for chart in svgs(text))


def test_a_summary_from_a_received_folder_is_escaped_in_the_failed_rounds_note(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\n")
    (tmp_path / "summary.json").write_text(
        json.dumps({"status": "completed", "failed_rounds": 1, "rounds": "<img src=x>"})
    )

    text = write_report(tmp_path).read_text(encoding="utf-8")

    assert "<img src=x>" not in text and "&lt;img src=x&gt;" in text


def test_missing_run_folder_raises_with_a_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass the folder a training run wrote"):
        write_report(tmp_path / "nope")


def test_summary_numbers_survive_json_round_trip(tmp_path):
    # A float such as 0.1 + 0.2 must show as a short figure, not 0.30000000000000004.
    (tmp_path / "summary.json").write_text(json.dumps({"kid": 0.1 + 0.2, "nan_metric": math.nan}))

    visible = " ".join(Page(write_report(tmp_path).read_text(encoding="utf-8")).text)

    assert "0.3" in visible and "0.30000000000000004" not in visible
    assert "nan" in visible


def test_sample_headings_name_the_model_each_round_was_drawn_with(tmp_path):
    # Prepare: a text run whose rounds record their evaluated model (round 2: client 3's
    # own, e.g. FedPer adapters), a per-client file beside it, and a simulated attack.
    write_metrics(
        tmp_path / "metrics.jsonl",
        [
            {"round": 1, "perplexity": 9.0, "evaluated_model": "global"},
            {"round": 2, "perplexity": 8.0, "evaluated_model": "client 3"},
        ],
    )
    samples = tmp_path / "samples"
    samples.mkdir()
    for name in ("round_0001.txt", "round_0002.txt", "round_0002_client_1.txt"):
        (samples / name).write_text(f"--- prompt 'The ' ({name})\n", encoding="utf-8")
    (tmp_path / "attackers.json").write_text(json.dumps({"kind": "flip", "clients": [0]}))
    # Execute
    page = write_report(tmp_path).read_text(encoding="utf-8")
    # Assert: the newest text is client 3's, never called the global model.
    assert "client 3&#x27;s own model (round_0002.txt)" in page
    assert "client 1&#x27;s own model (round_0002_client_1.txt)" in page
    assert "Newest generated text (round_0002.txt), client 3&#x27;s own model" in page
    assert "The samples show client 3&#x27;s own model, trained with them" in page
    assert "the global model" not in page.split("<h2>Figures")[0]


def test_an_older_run_names_its_final_model_from_the_summary_only(tmp_path):
    # Prepare: no per-round record; summary.json's sentence names the final round's model.
    make_run(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    summary.update(evaluated_round=5, evaluated_model="client 2's own model (the client ...)")
    (tmp_path / "run" / "summary.json").write_text(json.dumps(summary))
    # Execute
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    # Assert: round 5 (the newest) names it; earlier grids name no model they cannot know.
    assert "round 5 (the newest), drawn with client 2&#x27;s own model" in page
    assert "round 4</strong> · round_0004.png" in page
    assert "global model" not in page.split("<h2>Figures")[0]
