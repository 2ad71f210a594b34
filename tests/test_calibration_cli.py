"""`modelport calib inspect`: what the data looks like to the model, the checks' verdicts, and the exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from modelport.calibration import open_calibration
from modelport.cli import app
from modelport.model import load_model

runner = CliRunner()

TEXT_MODEL = """
class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 8)

    def forward(self, input_ids, attention_mask):
        return (self.embed(input_ids) * attention_mask[..., None]).sum(1)


def make():
    return Encoder(), {"input_ids": torch.zeros(1, 16, dtype=torch.long),
                       "attention_mask": torch.ones(1, 16, dtype=torch.long)}
"""
IMAGE_MODEL = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).relu()


def make():
    return Net(), (torch.zeros(1, 3, 8, 8),)
"""


@pytest.fixture
def text_data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "text.npz"
    np.savez(path, input_ids=rng.integers(0, 100, (150, 16)), attention_mask=np.ones((150, 16), np.int64),
             labels=np.arange(150) % 3)
    return path


def test_inspect_prints_samples_ranges_labels_and_checks(write_model, text_data):
    model = write_model(TEXT_MODEL)
    result = runner.invoke(app, ["calib", "inspect", str(text_data), "--model", model, "-d", "input_ids:0=batch",
                                 "-d", "attention_mask:0=batch"])
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in ("Calibration data", "150 used of 150 found", "input_ids", "attention_mask", "int64",
                     "Labels: 150 (3 distinct)", "input names", "no NaN or Inf", "fingerprint"):
        assert expected in out, expected
    assert "failed" not in out


def test_inspect_json_matches_the_set_a_build_would_use(write_model, text_data):
    model = write_model(TEXT_MODEL)
    result = runner.invoke(app, ["calib", "inspect", str(text_data), "--model", model, "--calib-size", "120",
                                 "--seed", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    source = load_model(model)
    expected = open_calibration(str(text_data), source.inputs, size=120, seed=4)
    assert report["ok"] and report["fingerprint"] == expected.fingerprint
    assert (report["found"], report["used"], report["seed"]) == (150, 120, 4)
    ids = next(row for row in report["inputs"] if row["name"] == "input_ids")
    assert ids["shapes"] == {"1x16": 120} and ids["dtypes"] == ["int64"] and 0 <= ids["min"] <= ids["max"] < 100
    assert report["labels"]["count"] == 120 and report["warnings"] == []


def test_inspect_exits_2_and_names_the_failing_samples(write_model, tmp_path):
    x = np.zeros((20, 3, 8, 8), np.float32)
    x[5, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    result = runner.invoke(app, ["calib", "inspect", str(tmp_path / "nan.npz"), "--model", write_model(IMAGE_MODEL),
                                 "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    finite = next(c for c in report["checks"] if c["check"] == "finite")
    assert not report["ok"] and finite["failed_samples"] == 1 and "nan.npz sample 5" in finite["messages"][0]
    assert any("Only 20 calibration samples" in w for w in report["warnings"])


def test_inspect_images_shows_the_preprocessing_and_classes(write_model, tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 10), (40 * i, 100, 200)).save(tmp_path / "imgs" / name / f"{i}.png")
    result = runner.invoke(app, ["calib", "inspect", f"images:{tmp_path / 'imgs'}?mean=0.5,std=0.5",
                                 "--model", write_model(IMAGE_MODEL), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["details"]["classes"] == ["cats", "dogs"] and report["labels"]["counts"] == {"0": 2, "1": 2}
    assert report["details"]["preprocess"].startswith("resize=cover,crop=8x8,")
    assert -1 <= report["inputs"][0]["min"] <= report["inputs"][0]["max"] <= 1


def test_inspect_synthetic_warns_in_the_report(write_model):
    result = runner.invoke(app, ["calib", "inspect", "synthetic:8", "--model", write_model(IMAGE_MODEL)])
    assert result.exit_code == 0
    assert "synthetic data" in result.output and "latency only" in result.output


def test_inspect_of_a_missing_source_exits_2_saying_what_is_wrong(write_model, tmp_path):
    result = runner.invoke(app, ["calib", "inspect", str(tmp_path / "nope.npz"), "--model",
                                 write_model(IMAGE_MODEL)])
    assert result.exit_code == 2
    stderr = " ".join(result.stderr.split())  # rich wraps at the terminal width
    assert stderr.startswith("error: Calibration file") and "nope.npz' does not exist" in stderr


def test_inspect_of_data_for_another_model_exits_2_naming_the_inputs(write_model, text_data):
    model = write_model(IMAGE_MODEL)
    table = runner.invoke(app, ["calib", "inspect", str(text_data), "--model", model])
    assert table.exit_code == 2 and "failed on 150 of 150" in table.stdout
    report = json.loads(runner.invoke(app, ["calib", "inspect", str(text_data), "--model", model, "--json"]).stdout)
    names = next(c for c in report["checks"] if c["check"] == "names")
    assert "Missing: ['x']; extra: ['attention_mask', 'input_ids']" in names["messages"][0]
    assert all(c["unchecked_samples"] == 150 for c in report["checks"] if c["check"] != "names")


def test_the_modelport_command_exits_2_with_one_paragraph(write_model, tmp_path):
    done = subprocess.run([sys.executable, "-m", "modelport.cli", "calib", "inspect", str(tmp_path / "nope.npz"),
                           "--model", write_model(IMAGE_MODEL)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "error:" in done.stderr and "nope.npz" in done.stderr and "Traceback" not in done.stderr
