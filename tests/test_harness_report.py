"""Reports render from a results.jsonl alone: the table, report.md/json/html, the recommendation, the Pareto front."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from modelport.harness import results
from modelport.harness.report import Budget, build_report, render_html, render_terminal, write_reports
from modelport.harness.report.cells import display_rows

MODEL = {"name": "digits_cnn", "origin": "modelport.examples:digits_cnn", "content_hash": "c0ffee",
         "inputs": ["x:batchx1x8x8:float32"], "outputs": ["output:batchx10:float32"]}
MACHINE = {"cpu": "Test CPU", "cores": 2, "flags": ["avx2"], "os": "Linux", "python": "3.11"}
EVAL = {"source": "held-out", "samples": 100, "fingerprint": "e1", "labels": True}


def run_record(plan, *, model=MODEL, labels=True, threads=2, reference_metric=98.0):
    return {"type": "run", "run": "r1", "time": "t", "model": model, "machine": MACHINE,
            "versions": {"modelport": "0.1.0", "onnxruntime": "1.32"},
            "settings": {"threads": threads, "iterations": 100, "duration": None, "warmup": 10},
            "data": {"calibration": None, "evaluation": {**EVAL, "labels": labels}},
            "reference_metric": {"name": "top1_accuracy", "units": "percentage points", "value": reference_metric}
            if labels else None,
            "plan": plan}


def row(backend, precision, batch=1, *, p50=None, acc=None, sqnr=None, cosine=0.9999, status="ok", reason=None,
        model=MODEL, stage=None, identical=False, threads=2):
    latency = None if p50 is None else {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.3, "mean_ms": p50,
                                        "std_ms": p50 / 10, "throughput": batch * 1000 / p50, "iterations": 100,
                                        "peak_rss_bytes": 300 << 20, "runner_rss_bytes": 20 << 20}
    fid = None
    if status == "ok" or acc is not None or sqnr is not None:
        fid = {"summary": {"max_abs": 0.0 if identical else 0.01, "mean_abs": 0.001, "cosine": cosine,
                           "cosine_min": cosine, "sqnr_db": None if identical else sqnr, "identical": identical,
                           "top1_agreement": 1.0, "nonfinite": 0},
               "metric": None if acc is None else {"name": "top1_accuracy", "units": "percentage points",
                                                   "value": acc, "reference": 98.0, "delta": acc - 98.0}}
    key = f"{backend}-{precision}-{batch}-{threads}-{model['content_hash']}"
    return {"type": "row", "key": key, "run": "r1", "time": "t", "model": model, "backend": backend,
            "title": {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
                      "tensorrt": "TensorRT"}.get(backend, backend),
            "kind": "artifact", "precision": precision, "options": {}, "batch": batch, "threads": threads,
            "status": status, "stage": stage, "reason": reason, "versions": {}, "protocol": {},
            "calibration": None, "evaluation": EVAL, "artifact": {"size_bytes": 150_000, "build_seconds": 1.5},
            "fidelity": fid, "latency": latency}


def write(path: Path, records):
    for r in records:
        results.append(path / results.RESULTS, r)


def labelled_rows(batch=1):
    return [
        row("pytorch", "fp32", batch, p50=0.40, acc=98.0, identical=True),
        row("onnxruntime", "fp32", batch, p50=0.10, acc=98.0, sqnr=110.0),
        row("onnxruntime", "int8", batch, p50=0.05, acc=97.4, sqnr=28.0),
        row("openvino", "int8", batch, p50=0.03, acc=95.0, sqnr=17.0),  # fastest, but 3 points down
        row("openvino", "fp16", batch, p50=0.12, acc=97.8, sqnr=60.0),  # slower and worse than ORT fp32
        row("tflite", "fp32", batch, status="failed", stage="latency", acc=98.0, sqnr=100.0,
            reason="latency: the measuring process was killed by SIGSEGV"),
    ]


def test_recommendation_is_the_fastest_row_within_one_point(tmp_path):
    write(tmp_path, [run_record([]), *labelled_rows()])
    report = build_report(tmp_path)
    rec = report["recommendations"][0]
    assert rec["key"] == "onnxruntime-int8-1-2-c0ffee"
    assert "ONNX Runtime int8" in rec["text"] and "8.0x PyTorch FP32" in rec["text"]
    assert report["recommendation"] == rec["text"]
    # a looser budget admits OpenVINO int8, which is faster
    loose = build_report(tmp_path, Budget(max_drop=5.0))
    assert loose["recommendations"][0]["key"] == "openvino-int8-1-2-c0ffee"


def test_pareto_front_holds_only_undominated_rows(tmp_path):
    write(tmp_path, [run_record([]), *labelled_rows()])
    rows = {r["key"].rsplit("-", 3)[0]: r for r in build_report(tmp_path)["rows"]}
    assert rows["onnxruntime-int8"]["pareto"] and rows["openvino-int8"]["pareto"]
    assert rows["onnxruntime-fp32"]["pareto"]  # ties PyTorch's accuracy, 4x faster
    assert not rows["openvino-fp16"]["pareto"]  # ORT fp32 is faster and more accurate
    assert not rows["pytorch-fp32"]["pareto"]  # same accuracy as ORT fp32, slower
    assert not rows["tflite-fp32"]["pareto"]  # failed rows are not plotted
    assert rows["openvino-int8"]["meets_budget"] is False and rows["onnxruntime-int8"]["meets_budget"] is True
    assert rows["onnxruntime-int8"]["speedup"] == pytest.approx(8.0)


def test_without_labels_the_budget_is_sqnr_and_cosine(tmp_path):
    rows = [row("pytorch", "fp32", p50=0.4, identical=True), row("onnxruntime", "int8", p50=0.05, sqnr=18.0),
            row("onnxruntime", "fp32", p50=0.1, sqnr=110.0), row("openvino", "fp16", p50=0.08, sqnr=70.0, cosine=0.95)]
    write(tmp_path, [run_record([], labels=False), *rows])
    report = build_report(tmp_path)
    assert report["reference_metric"] is None
    assert report["recommendations"][0]["key"] == "onnxruntime-fp32-1-2-c0ffee"  # int8 at 18 dB < 20 dB
    assert "SQNR >= 20 dB" in report["recommendation"]
    relaxed = build_report(tmp_path, Budget(min_sqnr=15.0))
    assert relaxed["recommendations"][0]["key"] == "onnxruntime-int8-1-2-c0ffee"
    # fp16 at 70 dB would win on latency, but its cosine 0.95 is under the 0.99 floor
    assert {r["key"]: r for r in relaxed["rows"]}["openvino-fp16-1-2-c0ffee"]["meets_budget"] is False


def test_no_row_within_budget_says_so(tmp_path):
    write(tmp_path, [run_record([]), row("onnxruntime", "int8", p50=0.05, acc=90.0, sqnr=10.0)])
    report = build_report(tmp_path)
    assert report["recommendations"][0]["key"] is None
    assert "no measured row meets the budget" in report["recommendation"]


def test_one_recommendation_per_batch_size(tmp_path):
    write(tmp_path, [run_record([]), *labelled_rows(1), *labelled_rows(8)])
    recs = build_report(tmp_path)["recommendations"]
    assert [(r["batch"], r["threads"]) for r in recs] == [(1, 2), (8, 2)]


def test_all_files_render_and_agree(tmp_path):
    plan = [{"backend": "tensorrt", "precision": p, "batch": b, "status": "unavailable", "key": f"trt-{p}-{b}",
             "reason": "tensorrt is not importable; pip install 'modelport[tensorrt]'"}
            for p in ("fp32", "int8") for b in (1, 8)]
    plan.append({"backend": "tflite", "precision": "int8", "batch": 1, "status": "planned", "key": "tfl-int8-1",
                 "reason": None})
    unavailable = [row("tensorrt", p, b, status="unavailable", reason=plan[0]["reason"])
                   for p in ("fp32", "int8") for b in (1, 8)]
    write(tmp_path, [run_record(plan), *labelled_rows(), *unavailable])
    report = build_report(tmp_path)
    files = write_reports(report, tmp_path)
    assert json.loads(files["json"].read_text())["recommendation"] == report["recommendation"]
    md = files["markdown"].read_text()
    assert report["recommendation"] in md
    assert "| backend | precision | batch |" in md
    assert "Test CPU, 2 cores" in md  # the machine is recorded in every report
    # unavailable rows with the same reason share a line; the interrupted item shows as not measured
    trt_lines = [ln for ln in md.splitlines() if ln.startswith("| TensorRT")]
    assert len(trt_lines) == 1 and trt_lines[0].startswith("| TensorRT | fp32,int8 | 1,8 | 2 | unavailable |")
    assert "not measured" in md and "the run stopped before measuring it" in md
    console = Console(record=True, width=250)
    render_terminal(report, console)
    text = console.export_text()
    assert "onnxruntime" in text and "failed (latency)" in text and report["recommendation"][:40] in text
    assert "tensorrt fp32,int8 (batch 1,8): unavailable: tensorrt is not importable" in text


def test_latest_row_for_the_same_measurement_wins_and_other_models_are_left_out(tmp_path):
    other = {**MODEL, "content_hash": "other", "name": "other_model"}
    old = row("onnxruntime", "fp32", p50=0.5, acc=98.0, sqnr=100.0, status="failed", stage="latency", reason="x")
    new = row("onnxruntime", "fp32", p50=0.1, acc=98.0, sqnr=100.0)
    write(tmp_path, [run_record([], model=other), row("onnxruntime", "fp32", p50=0.2, acc=98.0, model=other),
                     run_record([]), row("pytorch", "fp32", p50=0.4, acc=98.0, identical=True), old, new])
    rows = build_report(tmp_path)["rows"]
    assert [(r["backend"], r["status"], r["p50_ms"]) for r in rows] == [("pytorch", "ok", 0.4),
                                                                        ("onnxruntime", "ok", 0.1)]


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path):
    write(tmp_path, [run_record([]), *labelled_rows()])
    with open(tmp_path / results.RESULTS, "a") as f:
        f.write('{"type": "row", "key": "half')
    with pytest.warns(UserWarning, match="not valid JSON"):
        report = build_report(tmp_path)
    assert len(report["rows"]) == len(labelled_rows())


def test_missing_results_file_is_a_clear_error(tmp_path):
    from modelport.errors import BadInput

    with pytest.raises(BadInput, match=r"No results\.jsonl"):
        build_report(tmp_path)


class StrictHTML(HTMLParser):
    """Fails on any tag closed out of order or left open (void elements excepted)."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        """A self-closed tag (<meta/>, <rect/>) opens and closes itself."""

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_valid_self_contained_and_escapes_model_and_error_text(tmp_path):
    evil = {**MODEL, "name": '<script>alert("pwned")</script>', "origin": "m.py:make&<b>"}
    rows = [row("pytorch", "fp32", p50=0.4, acc=98.0, identical=True, model=evil),
            row("onnxruntime", "int8", p50=0.05, acc=97.5, sqnr=30.0, model=evil),
            row("openvino", "fp32", status="failed", stage="build", model=evil,
                reason='build: Unsupported op <Foo & "Bar"> in node </td></tr>')]
    write(tmp_path, [run_record([], model=evil), *rows])
    page = render_html(build_report(tmp_path))
    assert "<script" not in page and "</td></tr>')" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    assert "Unsupported op &lt;Foo &amp; &quot;Bar&quot;&gt; in node &lt;/td&gt;&lt;/tr&gt;" in page
    # well-formed as XML (so as HTML) once the doctype is set aside
    root = ET.fromstring(page.split("\n", 1)[1])
    assert root.tag == "html"
    svgs = {svg.get("class"): svg for svg in root.findall(".//{http://www.w3.org/2000/svg}svg")}
    assert set(svgs) == {"chart latency", "chart pareto", "chart size"}
    assert svgs["chart pareto"].findall(".//{http://www.w3.org/2000/svg}circle")
    parser = StrictHTML()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    assert '<script>alert("pwned")</script>' in "".join(parser.text)  # shown as text, not run
    # self-contained: no scripts, no external stylesheets, images, fonts or frames
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|\bhref=|@import|url\(", page)


def test_scatter_marks_the_pareto_front(tmp_path):
    write(tmp_path, [run_record([]), *labelled_rows()])
    page = render_html(build_report(tmp_path))
    ns = "{http://www.w3.org/2000/svg}"
    svg = next(s for s in ET.fromstring(page.split("\n", 1)[1]).iter(f"{ns}svg") if s.get("class") == "chart pareto")
    points = [c for c in svg.findall(f"{ns}circle") if c.find(f"{ns}title") is not None]
    assert len(points) == 5  # every ok row with latency and fidelity; the failed one is not plotted
    filled = [c.find(f"{ns}title").text.split(":")[0] for c in points if c.get("fill") == "#3a3"]
    assert sorted(filled) == ["ONNX Runtime fp32", "ONNX Runtime int8", "OpenVINO int8"]
    assert svg.find(f"{ns}polyline") is not None  # the front, joined
    # the recommended row (ONNX Runtime int8) is ringed
    rec = next(c for c in points if c.find(f"{ns}title").text.startswith("ONNX Runtime int8"))
    ring = [c for c in svg.findall(f"{ns}circle") if c.get("r") == "9"]
    assert len(ring) == 1 and (ring[0].get("cx"), ring[0].get("cy")) == (rec.get("cx"), rec.get("cy"))


def test_a_busy_machine_is_called_out_in_every_report(tmp_path):
    busy, idle = tmp_path / "busy", tmp_path / "idle"
    write(busy, [{**run_record([]), "load_average": 3.0}, *labelled_rows()])  # 2 cores
    write(idle, [{**run_record([]), "load_average": 0.2}, *labelled_rows()])
    report = build_report(busy)
    assert len(report["warnings"]) == 1 and "load average 3 on 2 cores" in report["warnings"][0]
    files = write_reports(report, busy)
    assert "**Warning:**" in files["markdown"].read_text() and 'class="warn"' in files["html"].read_text()
    assert build_report(idle)["warnings"] == []


SVG = "{http://www.w3.org/2000/svg}"


def _page(tmp_path: Path, records) -> ET.Element:
    write(tmp_path, records)
    return ET.fromstring(render_html(build_report(tmp_path)).split("\n", 1)[1])


def _charts(root: ET.Element, kind: str) -> list[ET.Element]:
    return [s for s in root.iter(f"{SVG}svg") if s.get("class") == f"chart {kind}"]


def test_latency_chart_per_batch_size_has_a_bar_and_whisker_per_timed_row(tmp_path):
    root = _page(tmp_path, [run_record([]), *labelled_rows(1), *labelled_rows(8)])
    charts = _charts(root, "latency")
    assert [c.get("aria-label") for c in charts] == ["Latency: batch 1, 2 threads", "Latency: batch 8, 2 threads"]
    for chart in charts:
        bars = chart.findall(f".//{SVG}rect[@class='bar']")
        assert len(bars) == 5  # the failed TFLite row has no latency and no bar
        assert len(chart.findall(f".//{SVG}g[@class='whisker']")) == 5
        assert {b.get("fill") for b in bars if b.find(f"{SVG}title").text.startswith("ONNX Runtime int8")} == \
            {"#54a24b"}  # precision as colour, the same in every chart
        groups = [t.text for t in chart.iter(f"{SVG}text") if t.get("class") == "group"]
        assert groups[0] == "PyTorch" and sorted(groups[1:]) == ["ONNX Runtime", "OpenVINO"]
        legend = {t.text for t in chart.iter(f"{SVG}text")} & {"fp32", "fp16", "int8"}
        assert legend == {"fp32", "fp16", "int8"}
    # the rows without a bar are named beside the charts
    unplotted = [p for p in root.iter("p") if p.get("class") == "unplotted"]
    assert len(unplotted) == 2 and "tflite fp32 (failed)" in unplotted[0].text


def test_size_chart_has_one_bar_per_artifact_not_per_batch_size(tmp_path):
    root = _page(tmp_path, [run_record([]), *labelled_rows(1), *labelled_rows(8)])
    (chart,) = _charts(root, "size")
    assert len(chart.findall(f".//{SVG}rect[@class='bar']")) == 6
    assert "146.5 KB" in {t.text for t in chart.iter(f"{SVG}text")}


def test_failed_and_unavailable_rows_show_their_reason_in_the_status_cell(tmp_path):
    records = [run_record([]), *labelled_rows(),
               row("tensorrt", "int8", status="unavailable", reason="no NVIDIA GPU usable: this torch is a CPU build")]
    root = _page(tmp_path, records)
    reasons = {td.find("div").text for td in root.iter("td") if td.get("class") == "status" and td.find("div")
               is not None}
    assert reasons == {"latency: the measuring process was killed by SIGSEGV",
                       "no NVIDIA GPU usable: this torch is a CPU build"}
    assert not [th for th in root.iter("th") if th.text == "note"]  # not a far-right column one must scroll to


def test_when_every_row_has_the_same_metric_the_plot_sets_points_by_sqnr(tmp_path):
    same = [row("pytorch", "fp32", p50=0.4, acc=98.0, identical=True),
            row("onnxruntime", "fp32", p50=0.1, acc=98.0, sqnr=110.0),
            row("onnxruntime", "int8", p50=0.05, acc=98.0, sqnr=28.0),
            row("openvino", "int8", p50=0.03, acc=98.0, sqnr=17.0)]
    (chart,) = _charts(_page(tmp_path, [run_record([]), *same]), "pareto")
    texts = [t.text for t in chart.iter(f"{SVG}text")]
    assert "Every row has top1_accuracy 98: the points are set by SQNR instead." in texts
    assert "SQNR vs PyTorch FP32, dB: higher is better" in texts
    ys = {c.find(f"{SVG}title").text.split(":")[0]: float(c.get("cy")) for c in chart.iter(f"{SVG}circle")
          if c.get("class") == "point"}
    assert ys["OpenVINO int8"] > ys["ONNX Runtime int8"] > ys["ONNX Runtime fp32"] > ys["PyTorch FP32"]  # SVG y: down
    front = {c.find(f"{SVG}title").text.split(":")[0] for c in chart.iter(f"{SVG}circle")
             if c.get("class") == "point" and c.get("fill") == "#3a3"}
    assert front == {"PyTorch FP32", "ONNX Runtime fp32", "ONNX Runtime int8", "OpenVINO int8"}


def test_a_row_whose_artifact_has_a_debug_page_links_to_it(tmp_path):
    rows = labelled_rows()
    for r in rows:
        r["artifact"]["path"] = f"artifacts/{r['backend']}-{r['precision']}"
    page = tmp_path / "artifacts" / "onnxruntime-int8-debug" / "debug.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    root = _page(tmp_path, [run_record([]), *rows])
    links = [a.get("href") for a in root.iter("a")]
    assert links == ["artifacts/onnxruntime-int8-debug/debug.html"]
    assert "| artifacts/onnxruntime-int8-debug/debug.html |" in (write_reports(build_report(tmp_path), tmp_path)
                                                                   ["markdown"].read_text())


def test_rows_built_to_a_budget_show_it_and_others_do_not_get_the_column(tmp_path):
    rows = labelled_rows()
    rows[2]["budget"] = {"budget": "cos>=0.995, drop<=1.0", "status": "met"}
    rows[3]["artifact"]["tune"] = {"budget": "drop<=0.5", "status": "missed"}
    write(tmp_path / "with", [run_record([]), *rows])
    write(tmp_path / "without", [run_record([]), *labelled_rows()])
    shown = display_rows(build_report(tmp_path / "with"))
    cells = {f"{c['backend']} {c['precision']}": c["build budget"] for c in shown}
    assert cells["ONNX Runtime int8"] == "met: cos>=0.995, drop<=1.0"
    assert cells["OpenVINO int8"] == "missed: drop<=0.5"
    assert cells["ONNX Runtime fp32"] == "-"
    assert "build budget" not in render_html(build_report(tmp_path / "without"))
