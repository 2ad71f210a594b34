"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): for consecutive layers A -> (ReLU) -> B,
divide A's output channel i (weights and bias) by s_i and multiply B's input channel i by s_i, with
s_i = sqrt(rA_i / rB_i) from the channels' weight ranges.

ReLU is positively homogeneous, so the float model computes the same function, while both layers' channels end
with the same range sqrt(rA_i * rB_i): one per-tensor 8-bit step then fits every channel. Chains (A -> B -> C,
a depthwise conv in the middle) are equalized pair by pair until the scales settle. BatchNorm is folded into
the convs by the exporter and ORT's pre-processing; a layer followed by anything but ReLU (an unfolded
BatchNorm, ReLU6, a residual Add) is not paired.

On by default (auto), each chain kept only where it measurably helps: the model's outputs, with every layer's
weights quantized as ORT will and the activations between the chain's layers quantized per tensor with their
min/max, must reach a higher SQNR against float on calibration samples. The activations are in the measure
because CLE moves range into them (it rescales the channels between the layers), and that is where a per-channel
weight grid gains most: on the planted-outlier digits CNN (benchmarks/qat.py) a few channels 128x wider set the
next layer's input range and per-channel INT8 fell to 94.57 % top-1, 98.99 % with CLE. `on` keeps every chain
without the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from modelport.quantize.algorithms.base import Algorithm, AlgorithmRun
from modelport.quantize.algorithms.layers import (
    READS,
    Layer,
    channel_max,
    find_layers,
    initial_values,
    quantized_output_sqnr,
    scale_along,
    write_values,
)
from modelport.quantize.declare import Declared, setting
from modelport.quantize.graph import Graph

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.settings import QdqSettings

MODES = ("auto", "on", "off")
SWEEPS = 20                # passes over a chain's pairs; the scales settle in a few
SETTLED = 1e-3             # largest |log s| of a sweep under which a chain is settled
MIN_GAIN_DB = 0.1          # output SQNR a chain must add to be kept


@dataclass(frozen=True, kw_only=True)
class CleOptions(Declared):
    title: ClassVar[str] = "cle option"

    mode: str = setting("auto", "Cross-layer equalization of consecutive Conv/Gemm/MatMul pairs: auto (each chain "
                        "kept where the quantized model's outputs measure closer to float), on (every chain) or off.",
                        str.lower, choices=MODES, key="cle")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def pairs(graph: Graph, layers: list[Layer]) -> list[tuple[Layer, Layer]]:
    """(A, B) where A's output reaches only B, directly or through one ReLU, channel for channel."""
    by_input = {layer.input: layer for layer in layers}
    outputs = {o.name for o in graph.model.graph.output}
    found = []
    for a in layers:
        t = a.output
        readers = graph.consumers[t]
        if len(readers) != 1 or t in outputs or a.grouped:
            continue
        if readers[0].op_type == "Relu":
            t = readers[0].output[0]
            if len(graph.consumers[t]) != 1 or t in outputs:
                continue
        b = by_input.get(t)
        if b is None or b.grouped or graph.consumers[t][0].name != b.name:
            continue
        if graph.inits[a.weight].dims[a.out_axis] == graph.inits[b.weight].dims[b.in_axis]:
            found.append((a, b))
    return found


def chains(found: list[tuple[Layer, Layer]]) -> list[list[tuple[Layer, Layer]]]:
    """The pairs grouped by the layers they share, in graph order."""
    group: dict[str, int] = {}
    out: list[list[tuple[Layer, Layer]]] = []
    for a, b in found:
        k = group.get(a.name, group.get(b.name))
        if k is None:
            k = len(out)
            out.append([])
        out[k].append((a, b))
        group[a.name] = group[b.name] = k
    return out


def equalize(chain: list[tuple[Layer, Layer]], values: dict[str, np.ndarray]) -> None:
    """Rescale the chain's weights (and the first layers' biases) in `values` until the channel ranges settle."""
    for _ in range(SWEEPS):
        moved = 0.0
        for a, b in chain:
            ra = channel_max(values[a.weight], a.out_axis)
            rb = channel_max(values[b.weight], b.in_axis)
            s = np.where((ra > 0) & (rb > 0), np.sqrt(ra / np.maximum(rb, 1e-30)), 1.0).astype(np.float32)
            values[a.weight] = scale_along(values[a.weight], a.out_axis, 1 / s)
            if a.bias is not None:
                values[a.bias] = (values[a.bias] / s).astype(np.float32)
            values[b.weight] = scale_along(values[b.weight], b.in_axis, s)
            moved = max(moved, float(np.abs(np.log(s)).max()))
        if moved < SETTLED:
            return


def _spread(values: dict[str, np.ndarray], layer: Layer) -> float:
    """Largest over smallest nonzero output-channel range: how badly one per-tensor step fits the weight."""
    r = channel_max(values[layer.weight], layer.out_axis)
    r = r[r > 0]
    return round(float(r.max() / r.min()), 1) if len(r) else 1.0


def equalize_model(prepared: Path, calibration: CalibrationSet, options: CleOptions, settings: QdqSettings
                   ) -> AlgorithmRun:
    """Equalize every chain of consecutive layers whose quantized output SQNR it raises (every chain with `on`)."""
    graph = Graph.load(prepared)
    layers = find_layers(graph, settings)
    found = chains(pairs(graph, layers))
    if not found:
        return AlgorithmRun()
    values = initial_values(graph, [n for layer in layers for n in (layer.weight, layer.bias)])
    done = []
    for chain in found:
        between = list(dict.fromkeys(b.input for _, b in chain))
        before = quantized_output_sqnr(prepared, layers, values, calibration, settings, between)
        trial = dict(values)
        equalize(chain, trial)
        after = quantized_output_sqnr(prepared, layers, trial, calibration, settings, between)
        members = list(dict.fromkeys(layer.name for pair in chain for layer in pair))
        by_name = {layer.name: layer for pair in chain for layer in pair}
        change = {"layers": members, "range_spread_before": [_spread(values, by_name[n]) for n in members],
                  "range_spread_after": [_spread(trial, by_name[n]) for n in members],
                  "output_sqnr_db_before": before, "output_sqnr_db_after": after}
        kept = options.mode == "on" or after >= before + MIN_GAIN_DB
        done.append({**change, "kept": kept})
        if kept:
            values = trial
    if any(c["kept"] for c in done):
        write_values(graph, values, prepared)
    return AlgorithmRun(done)


ALGORITHM = Algorithm("cle", "Cross-layer equalization: equal per-channel weight ranges across consecutive layers.",
                      CleOptions, equalize_model, version=2, reads=READS)
