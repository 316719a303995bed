"""The report of a tiny real federation, opened in headless Chromium: every embedded
image decodes and every chart renders, with no script or console error.

The report holds no script of its own; the test loads a copy with a small checker
appended, which writes what the browser saw into the page, and reads it back from
``--dump-dom``. Needs Debian's ``chromium`` (scripts/setup.sh installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tiny_federation import tiny_config

from fedgen.experiment import run_experiment
from fedgen.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Reports each image's decoded size, each chart's rendered size and whether the pictures
# inside charts (SVG <image>) decode, and any error the page raised. Everything it reads is
# ready by the load event and read synchronously there: ``--dump-dom`` may dump as soon as
# the load event has run, so an awaited decode could land after the dump on a busy machine
# (it did in CI). Each SVG <image> is therefore probed by a hidden <img> added before load,
# which the load event waits for.
CHECKER = """
<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
const pageImages = [...document.images];
const probes = [...document.querySelectorAll("svg image")].map(node => {
  const probe = document.createElement("img");
  probe.src = node.getAttribute("href");
  probe.style.display = "none";
  document.body.appendChild(probe);
  return probe;
});
window.addEventListener("load", () => {
  const images = pageImages.map(img => ({
    alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight}));
  const charts = [...document.querySelectorAll("svg")].map(svg => {
    const box = svg.getBoundingClientRect();
    return {label: svg.getAttribute("aria-label"), width: box.width, height: box.height,
            marks: svg.querySelectorAll("polyline, circle, rect, text, image").length};
  });
  const embedded = probes.map(probe => probe.complete ? probe.naturalWidth : 0);
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images, charts, embedded, errors: window.__errors,
    parseErrors: document.querySelectorAll("parsererror").length});
  document.body.appendChild(out);
});
</script>
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory, mnist_dir) -> Path:
    """report.html of a 3-round cGAN federation evaluated every round (no TSTR: fast)."""
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    cfg = tiny_config(
        mnist_dir,
        **{
            "eval.every": 1,
            "eval.final": "false",
            "eval.num_quality_samples": 50,
            "eval.grid_per_class": 2,
            "ledger": "false",
        },
    )
    run_experiment(cfg, run_dir, progress=False)
    return run_dir / "report.html"


def browser_view(page: Path, tmp_path: Path) -> tuple[dict, str]:
    """What Chromium saw of ``page``: the checker's findings, and its log on stderr."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed; scripts/setup.sh installs it (Debian package)")
    checked = tmp_path / "checked.html"
    checked.write_text(
        page.read_text(encoding="utf-8").replace("</body>", CHECKER + "</body>"), encoding="utf-8"
    )
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            checked.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the checker did not run; Chromium said:\n{proc.stderr[-2000:]}"
    text = found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(text), proc.stderr


def test_every_image_and_chart_of_a_real_run_loads_in_chromium(report, tmp_path):
    # Execute
    seen, log = browser_view(report, tmp_path)

    # Assert: the newest grid at the top and the earlier two, each decoded to its size.
    html = report.read_text(encoding="utf-8")
    assert len(seen["images"]) == html.count("<img ") == 3
    for image in seen["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    # Every chart is laid out with something drawn in it: curves and the partition.
    labels = [chart["label"] for chart in seen["charts"]]
    assert len(labels) == html.count("<svg ")
    assert "training loss (loss/*)" in labels and "labels per client" in labels
    for chart in seen["charts"]:
        assert chart["width"] > 0 and chart["height"] > 0 and chart["marks"] > 0, chart
    assert seen["errors"] == [] and seen["parseErrors"] == 0
    console = [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console


def test_a_thousand_clients_partition_picture_decodes(tmp_path):
    # Prepare: a run folder holding only the partition of 1,000 clients over 10 classes.
    run_dir = tmp_path / "many"
    run_dir.mkdir()
    counts = [[(i * 7 + j * 3) % 50 for j in range(10)] for i in range(1000)]
    (run_dir / "partition.json").write_text(json.dumps({"counts": counts}))

    # Execute
    page = write_report(run_dir)
    seen, _ = browser_view(page, tmp_path)

    # Assert: one picture, not 10,000 labelled cells, and it decodes in the browser.
    assert page.stat().st_size < 200_000
    assert seen["embedded"] and all(width > 0 for width in seen["embedded"])
    assert [chart["label"] for chart in seen["charts"]] == ["labels per client"]
    assert seen["errors"] == []


def test_the_report_opens_with_samples_and_headline_figures(report):
    html = report.read_text(encoding="utf-8")
    order = [html.index(s) for s in ("At a glance", "<h2>Curves", "<h2>Partition", "All figures")]
    assert order == sorted(order)
    glance = html[html.index("At a glance") : html.index("<h2>Curves")]
    assert "<img " in glance and "data sent" in glance and " MB" in glance
    # Constant bookkeeping (clients, steps, the classifier's own accuracy) is not drawn.
    assert 'aria-label="clients per round"' not in html
    assert 'aria-label="real_test_accuracy"' not in html
    assert "real_test_accuracy = " in html
