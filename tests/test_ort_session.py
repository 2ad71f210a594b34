"""The one way modelport opens an ONNX Runtime session (modelport/ort_session.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from modelport.ort_session import ort_session


def _double_relu(path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_session_runs_on_the_cpu_with_its_threads_pinned_and_errors_only_logged(tmp_path):
    session = ort_session(_double_relu(tmp_path / "m.onnx"), threads=2)
    options = session.get_session_options()
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level) == (2, 1, 3)
    x = np.array([[-1, 0, 1], [2, -3, 4]], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], 2 * np.maximum(x, 0))


def test_serialized_bytes_open_like_a_file_and_an_offline_optimization_is_saved(tmp_path):
    path = _double_relu(tmp_path / "m.onnx")
    session = ort_session(path.read_bytes(), level="none", optimized_path=tmp_path / "saved.onnx")
    assert [o.name for o in session.get_outputs()] == ["y"]
    assert [n.op_type for n in onnx.load(str(tmp_path / "saved.onnx")).graph.node] == ["Relu", "Add"]
