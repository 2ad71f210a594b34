"""The QDQ settings are declared once: that declaration checks values, lists every backend's QDQ options,
names the known settings and algorithms when one is wrong, and is what the manifest records."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from modelport.backends import get_backend
from modelport.cli import app
from modelport.errors import BadInput
from modelport.quantize import ALGORITHMS, METHODS, QdqSettings, SmoothQuantOptions, algorithm
from modelport.quantize.algorithms import enabled_algorithms
from modelport.quantize.algorithms.adaround import AdaRoundOptions
from modelport.quantize.algorithms.bias_correction import BiasCorrectionOptions
from modelport.quantize.algorithms.cle import CleOptions
from tests.models import MLP


def _declared(cls) -> dict[str, tuple]:
    """--option key -> (default, help, precisions), read from the dataclass fields themselves."""
    return {s.key or f.name: (f.default, s.help, s.precisions) for f in fields(cls)
            if (s := f.metadata.get("setting")) is not None and s.option}


def _as_json(value):
    return list(value) if isinstance(value, tuple) else value


def test_backends_options_show_each_qdq_setting_as_declared():
    result = CliRunner().invoke(app, ["backends", "--options", "--json"])
    assert result.exit_code == 0, result.output
    ort = next(r for r in json.loads(result.stdout) if r["name"] == "onnxruntime")
    listed = {(o["name"], tuple(o["precisions"])): o for o in ort["options"]}
    declared = {**_declared(QdqSettings), **_declared(SmoothQuantOptions), **_declared(CleOptions),
                **_declared(BiasCorrectionOptions), **_declared(AdaRoundOptions)}
    assert {"method", "percentile", "per_channel", "symmetric", "op_types", "exclude", "auto_exclude", "fidelity",
            "analysis_samples", "preprocess", "smooth", "cle", "bias_correction", "adaround",
            "adaround_steps"} <= set(declared)
    for key, (default, help_text, precisions) in declared.items():
        shown = listed[(key, precisions)]
        assert shown["default"] == _as_json(default) and shown["help"] == help_text, key


def test_tensorrt_and_openvino_take_their_qdq_options_from_the_declaration():
    method_help = _declared(QdqSettings)["method"][1]
    trt = {o.name: o for o in get_backend("tensorrt").options}
    assert trt["calibration_method"].choices == METHODS and trt["calibration_method"].help == method_help
    ov = {o.name: o for o in get_backend("openvino").options}
    assert ov["method"].choices == METHODS and method_help in ov["method"].help
    assert ov["method"].default is None and ov["symmetric_activations"].default is None  # given only with source=qdq


def test_a_backends_validated_options_become_settings_and_the_backend_decides_the_rest():
    recipe = get_backend("onnxruntime").recipe("int8", {"symmetric": "true", "fidelity": "0.5", "smooth": "0"})
    settings = QdqSettings.from_options(recipe.options, weight_type="uint8")
    assert settings.symmetric_activations and settings.fidelity_target == 0.5 and settings.weight_type == "uint8"
    assert settings.reduce_range is False  # ORT's own reduce_range option (auto) is not the pass's decided field
    assert settings.algorithms["smoothquant"] == SmoothQuantOptions(alpha=0.0)
    assert "smoothquant" not in [a.name for a, _ in enabled_algorithms(settings)]  # smooth=0 disables it


def test_an_unknown_qdq_setting_is_bad_input_naming_the_known_ones():
    with pytest.raises(BadInput, match="colour") as caught:
        QdqSettings().replace(colour="blue")
    assert "method" in caught.value.hint and "fidelity_target" in caught.value.hint


@pytest.mark.parametrize(("change", "message"), [({"method": "mse"}, "method"),
                                                 ({"analysis_samples": 0}, "analysis_samples"),
                                                 ({"fidelity_target": 1.5}, "fidelity_target"),
                                                 ({"weight_type": "int4"}, "weight_type")])
def test_a_bad_value_is_bad_input_with_the_settings_help(change, message):
    with pytest.raises(BadInput, match=message) as caught:
        QdqSettings(**change)
    assert caught.value.hint


def test_an_unknown_algorithm_is_bad_input_naming_the_registered_ones():
    with pytest.raises(BadInput, match="gptq") as caught:
        QdqSettings(algorithms={"gptq": SmoothQuantOptions()})
    assert "smoothquant" in caught.value.hint
    with pytest.raises(BadInput, match="smoothquant"):
        algorithm("gptq")


def test_the_registry_lists_each_algorithm_with_its_options_and_defaults():
    assert {name: a.options for name, a in ALGORITHMS.items()} == {
        "smoothquant": SmoothQuantOptions, "cle": CleOptions, "adaround": AdaRoundOptions,
        "bias_correction": BiasCorrectionOptions}
    assert [(o.name, o.default) for o in SmoothQuantOptions.as_options()] == [("smooth", 0.75)]
    assert [(o.name, o.default) for o in AdaRoundOptions.as_options()] == [("adaround", False),
                                                                           ("adaround_steps", 300)]
    assert QdqSettings().algorithms == {"smoothquant": SmoothQuantOptions(), "cle": CleOptions(),
                                        "adaround": AdaRoundOptions(), "bias_correction": BiasCorrectionOptions()}
    # SmoothQuant and CLE run by default (each keeps only what measures better); AdaRound and bias correction wait
    # for their options
    assert [a.name for a, _ in enabled_algorithms(QdqSettings())] == ["smoothquant", "cle"]


def test_option_keys_are_distinct_across_the_settings_and_every_algorithm():
    keys = [o.name for o in QdqSettings.as_options()]
    assert len(keys) == len(set(keys))


def test_the_manifest_record_is_every_declared_field_resolved():
    record = QdqSettings(symmetric_activations=True, exclude=["Softmax"]).record()
    assert set(record) == {f.name for f in fields(QdqSettings)}
    assert record["activation_type"] == "int8"  # decided from symmetric when the backend did not decide it
    assert record["exclude"] == ["Softmax"]
    assert record["algorithms"] == {"smoothquant": {"alpha": 0.75}, "cle": {"mode": "auto"},
                                    "adaround": {"learn": False, "steps": 300}, "bias_correction": {"correct": False}}
    json.dumps(record)


def test_an_unknown_build_option_exits_2_naming_the_known_ones(write_model, tmp_path):
    result = CliRunner().invoke(app, ["build", write_model(MLP), "--backend", "onnxruntime", "--precision", "int8",
                                      "--option", "bogus=1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "bogus" in text and "smooth" in text and "fidelity" in text and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
