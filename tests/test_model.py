"""Loading a user's model: factories, example inputs, --input specs, .pt2 files, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelport.errors import BadInput
from modelport.model import load_model
from modelport.specs import TensorSpec, parse_dynamic_spec, parse_input_spec
from tests.models import CNN, ENCODER, TWO_OUTPUTS


def test_factory_with_examples_gives_named_specs_and_eval_mode(write_model):
    source = load_model(write_model(CNN))
    assert source.inputs == [TensorSpec("x", (1, 3, 16, 16), "float32")]
    assert source.outputs == [TensorSpec("output", (1, 4), "float32")]
    assert not source.module.training
    assert len(source.weights_hash) == 16


def test_bare_module_takes_its_inputs_from_specs(write_model):
    source = load_model(write_model(CNN, factory="bare"), inputs=["x:2x3x16x16:float32"])
    assert source.inputs[0].shape == (2, 3, 16, 16)
    assert source.example_inputs["x"].shape == (2, 3, 16, 16)


def test_bare_module_without_specs_asks_for_input(write_model):
    with pytest.raises(BadInput, match="--input"):
        load_model(write_model(CNN, factory="bare"))


def test_specs_that_do_not_fit_the_model_are_rejected(write_model):
    with pytest.raises(BadInput, match="does not accept inputs x:1x5x16x16"):
        load_model(write_model(CNN, factory="bare"), inputs=["x:1x5x16x16"])


def test_dict_examples_keep_their_names_and_dynamic_dims_propagate_to_outputs(write_model):
    source = load_model(write_model(ENCODER), dynamic=["ids:0=batch", "mask:0=batch", "ids:1=seq", "mask:1=seq"])
    assert [s.name for s in source.inputs] == ["ids", "mask"]
    assert source.inputs[0] == TensorSpec("ids", ("batch", "seq"), "int64")
    assert source.outputs == [TensorSpec("output", ("batch", 5), "float32")]


def test_dict_outputs_are_named_by_their_keys(write_model):
    source = load_model(write_model(TWO_OUTPUTS))
    assert source.output_names == ["logits", "embedding"]


def test_weights_hash_follows_the_weights(write_model):
    ref = write_model(CNN)
    a, b = load_model(ref), load_model(ref)
    assert a.weights_hash == b.weights_hash
    with torch.no_grad():
        b.module.fc.bias.add_(1.0)
    from modelport.model import weights_hash

    assert weights_hash(b.module) != a.weights_hash


FLAGGED = """
class Flagged(nn.Module):
    def __init__(self, doubled):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 4)
        self.doubled = doubled

    def forward(self, x):
        return self.fc(x) * (2.0 if self.doubled else 1.0)


def plain():
    return Flagged(False).eval(), (torch.randn(1, 4),)


def doubled():
    return Flagged(True).eval(), (torch.randn(1, 4),)
"""


def test_cached_exports_follow_the_code_not_only_the_weights(write_model):
    from modelport.bundle import ModelBundle

    plain, doubled = load_model(write_model(FLAGGED, "plain")), load_model(write_model(FLAGGED, "doubled"))
    assert plain.weights_hash == doubled.weights_hash  # same weights, different graph
    assert plain.content_hash != doubled.content_hash
    assert ModelBundle(plain).onnx_path != ModelBundle(doubled).onnx_path
    edited = load_model(write_model(FLAGGED.replace("2.0 if", "3.0 if"), "plain", name="edited.py"))
    assert edited.weights_hash == plain.weights_hash and edited.code_hash != plain.code_hash


def test_pt2_file_loads_with_its_dynamic_axes(tmp_path, write_model):
    source = load_model(write_model(CNN))
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(source.module, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    loaded = load_model(str(path))
    assert loaded.inputs[0].shape == ("batch", 3, 16, 16)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)}
    np.testing.assert_allclose(loaded.run(feeds)["output"], source.run(feeds)["output"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("text", "spec"), [
    ("x:1x3x224x224:float32", TensorSpec("x", (1, 3, 224, 224), "float32")),
    ("ids:2x128:int64", TensorSpec("ids", (2, 128), "int64")),
    ("x:4x10", TensorSpec("x", (4, 10), "float32")),
])
def test_input_specs_parse(text, spec):
    assert parse_input_spec(text) == spec


@pytest.mark.parametrize("text", ["x", "x:", "x:1xAx3", "x:1x3:complex7", "x:0x3"])
def test_malformed_input_specs_are_bad_input(text):
    with pytest.raises(BadInput):
        parse_input_spec(text)


def test_dynamic_specs_parse_and_reject_garbage():
    assert parse_dynamic_spec("x:0=batch") == ("x", 0, "batch")
    with pytest.raises(BadInput, match="NAME:AXIS=DIMNAME"):
        parse_dynamic_spec("x=batch")
