"""report.html in a real browser: headless Chromium lays the page out, and a measuring script (added to a copy of
the page; the report itself has none) reports what a reader would see: the charts' marks, whether anything is
wider than the window, whether the Pareto labels overlap, whether a reason is on screen, whether user text ran.

Chromium comes from Debian's packages (`make test` installs it where apt-get can); without it the test skips.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from modelport.harness.report import build_report, render_html
from tests.test_harness_report import MODEL, labelled_rows, row, run_record, write

EVIL = '<script>document.title="pwned"</script>'
BASELINE = Path(__file__).parent.parent / "examples" / "ci" / "baseline" / "digits_cnn" / "report.json"

MEASURE = """<script>
addEventListener("load", () => {
  const root = document.documentElement, all = s => Array.from(document.querySelectorAll(s));
  const boxes = all("svg.pareto text.label").map(t => t.getBoundingClientRect());
  let overlaps = 0;
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach(b => {
    if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) overlaps++; }));
  const why = all("td.status .why").map(e => e.getBoundingClientRect());
  const out = {
    scrollWidth: root.scrollWidth, innerWidth: innerWidth, height: root.scrollHeight, title: document.title,
    scripts: all("script").length, h1: document.querySelector("h1").textContent,
    latencyCharts: all("svg.latency").length, bars: all("svg.latency rect.bar").length,
    whiskers: all("svg.latency g.whisker").length, points: all("svg.pareto circle.point").length,
    labels: boxes.length, overlaps: overlaps, sizeBars: all("svg.size rect.bar").length,
    chartsFit: all("svg.chart").every(s => s.getBoundingClientRect().right <= innerWidth),
    reasonsOnScreen: why.length > 0 && why.every(r => r.width > 0 && r.height > 0 && r.right <= innerWidth),
    tableScrolls: all(".scroll").every(d => d.scrollWidth >= d.clientWidth && d.clientWidth <= innerWidth),
  };
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if found is None:
        pytest.skip("no Chromium on PATH: `make test` installs Debian's chromium where apt-get can; "
                    "or apt-get install chromium")
    return found


def _chromium(binary: str, page: Path, profile: Path, *args: str, width: int, height: int = 900) -> str:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}", *args,
               page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _measure(binary: str, page_html: str, tmp_path: Path, width: int) -> dict:
    """Lay the page out at `width` CSS pixels and return what the measuring script saw."""
    page = tmp_path / f"measured-{width}.html"
    page.write_text(page_html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom = _chromium(binary, page, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", width=width)
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> str:
    """A report of two batch sizes with a failed row, an unavailable runtime and a model named with markup."""
    out = tmp_path_factory.mktemp("browser")
    evil = {**MODEL, "name": EVIL}
    rows = [{**r, "model": evil} for r in [*labelled_rows(1), *labelled_rows(8)]]
    rows += [{**row("tensorrt", p, b, status="unavailable", model=evil,
                    reason="tensorrt is not importable (ModuleNotFoundError: No module named 'tensorrt'); pip "
                           "install 'modelport[tensorrt]'; no NVIDIA GPU usable: this torch build has no CUDA support"),
              "artifact": None} for p in ("fp16", "int8") for b in (1, 8)]
    write(out, [run_record([], model=evil), *rows])
    return render_html(build_report(out))


@pytest.mark.parametrize("width", [1280, 640])
def test_the_report_renders_with_its_marks_and_fits_the_window(chromium, report_page, tmp_path, width):
    seen = _measure(chromium, report_page, tmp_path, width)
    assert seen["scrollWidth"] <= seen["innerWidth"] == width  # nothing wider than the window: the table scrolls
    assert seen["chartsFit"] and seen["tableScrolls"]
    assert seen["latencyCharts"] == 2 and seen["bars"] == seen["whiskers"] == 10  # 5 timed rows per batch size
    assert seen["points"] == 10 and seen["sizeBars"] == 6
    assert seen["labels"] >= 8 and seen["overlaps"] == 0
    assert seen["reasonsOnScreen"]
    # the model's name is shown as text; it never ran (the only script is the measuring one)
    assert seen["scripts"] == 1 and seen["title"] == f"modelport bench: {EVIL}" and EVIL in seen["h1"]


def test_a_real_bench_report_renders_and_is_screenshot(chromium, tmp_path):
    """The committed CI baseline (a real bench of the digits example) as a reader sees it."""
    page_html = render_html(json.loads(BASELINE.read_text()))
    seen = _measure(chromium, page_html, tmp_path, 1280)
    assert seen["scrollWidth"] <= seen["innerWidth"] and seen["bars"] == seen["whiskers"] > 0 and seen["points"] > 0
    assert seen["overlaps"] == 0
    page = tmp_path / "report.html"
    page.write_text(page_html, encoding="utf-8")
    shot = tmp_path / "report.png"
    _chromium(chromium, page, tmp_path / "profile", f"--screenshot={shot}", width=1280, height=seen["height"])
    assert _png_size(shot) == (1280, seen["height"])
