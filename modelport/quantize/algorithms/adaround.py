"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): rounding each
weight to its nearest grid point is not what minimizes a layer's output error; learning, per weight, whether
it rounds up or down is, and a few hundred steps on a few dozen samples find a better choice.

Per layer, on its float input activations from the analysis samples (at most LAYER_BYTES of them): the soft
rounding floor(W/s) + h(V), h the rectified sigmoid, is trained with Adam in torch to reconstruct the float
output, under a regularizer whose exponent is annealed so that every h ends at 0 or 1. The learnt rounding is
then written into the float model as weights that lie exactly on ORT's grid, so ORT's own nearest rounding
reproduces it. Each channel's (or the tensor's) largest-magnitude weight is written as it was and rounds to its
nearest, and no other weight may round past its magnitude, so the scale ORT computes from the written weights is
unchanged: with uint8 weights (the u8u8 kernels x86 without VNNI gets) no grid point equals that magnitude, so a
pinned weight written on the grid would move the scale. A layer keeps the learnt rounding only where its output
error on held-out samples (the last quarter of those collected) is lower than nearest rounding's, and the layers'
roundings are kept only where the model's output with its weights quantized gains MIN_GAIN_DB with them: each layer
learns on float inputs, and small per-layer gains can add up to a loss (CREPE tiny: every layer gained 0.01-0.06 dB
and the quantized model lost 1.4 dB on held-out tones).

Off by default: it costs layers x steps optimizer steps (`adaround_steps`, default 300: seconds per layer on a
CPU for small layers), where bias correction and equalization cost one pass over the samples.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modelport import progress
from modelport.options import parse_bool
from modelport.quantize.algorithms.base import Algorithm, AlgorithmRun
from modelport.quantize.algorithms.layers import (
    READS,
    Grid,
    Layer,
    channel_max,
    find_layers,
    forward,
    initial_values,
    quantized_output_sqnr,
    weight_grid,
    write_values,
)
from modelport.quantize.declare import Declared, setting
from modelport.quantize.graph import Graph
from modelport.quantize.statistics import run_collecting, sqnr_db

if TYPE_CHECKING:
    import torch

    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.settings import QdqSettings

ZETA, GAMMA = 1.1, -0.1     # the rectified sigmoid's stretch (the paper's values)
BETA = (20.0, 2.0)          # the regularizer's exponent, annealed from first to last
WARMUP = 0.2                # share of the steps that reconstruct only, before the regularizer starts
REGULARIZER = 1.0           # its weight, relative to the nearest-rounding reconstruction error
LEARNING_RATE = 0.02
BATCH = 32                  # samples (rows, for a matrix product) per step
LAYER_BYTES = 32 << 20      # float inputs held for one layer
CHUNK_BYTES = 256 << 20     # float inputs held at once, across the layers collected in one pass
HELD_OUT = 0.25
MIN_GAIN_DB = 0.1          # model output SQNR the learnt rounding must add to be kept


def _steps(value: Any) -> int:
    steps = int(value)
    if steps < 1:
        raise ValueError("expected a positive number of optimizer steps")
    return steps


@dataclass(frozen=True, kw_only=True)
class AdaRoundOptions(Declared):
    title: ClassVar[str] = "adaround option"

    learn: bool = setting(False, "Learn each Conv/Gemm/MatMul weight's rounding on calibration samples (AdaRound); "
                          "slow, hence off.", parse_bool, key="adaround")
    steps: int = setting(300, "AdaRound optimizer steps per layer.", _steps, key="adaround_steps")

    @property
    def enabled(self) -> bool:
        return self.learn


def _sample_bytes(graph: Graph, tensor: str) -> int:
    """Bytes of one sample of `tensor` from its inferred shape (1 MiB where a dimension is unknown)."""
    info = graph.value_infos[tensor].type.tensor_type.shape.dim
    dims = [d.dim_value for d in info[1:]]
    return 4 * int(np.prod(dims)) if all(d > 0 for d in dims) else 1 << 20


def _chunks(graph: Graph, layers: list[Layer], samples: int) -> list[list[Layer]]:
    """Layers grouped so that one collection pass holds at most CHUNK_BYTES of their inputs."""
    out: list[list[Layer]] = [[]]
    held = 0
    for layer in layers:
        size = min(samples * _sample_bytes(graph, layer.input), LAYER_BYTES)
        if out[-1] and held + size > CHUNK_BYTES:
            out.append([])
            held = 0
        out[-1].append(layer)
        held += size
    return out


def _collect(prepared: Path, graph: Graph, layers: list[Layer], calibration: CalibrationSet,
             settings: QdqSettings) -> dict[str, np.ndarray]:
    """Each layer's float inputs over the analysis samples, up to LAYER_BYTES per layer."""
    held: dict[str, list[np.ndarray]] = defaultdict(list)
    limit = {la.input: max(1, LAYER_BYTES // _sample_bytes(graph, la.input)) for la in layers}

    def keep(result: dict[str, np.ndarray]) -> None:
        for t, cap in limit.items():
            have = sum(len(a) for a in held[t])
            if have < cap:
                held[t].append(result[t][:cap - have].astype(np.float32))

    with tempfile.TemporaryDirectory(prefix="modelport-adaround-") as tmp:
        run_collecting(prepared, sorted(limit), calibration, settings, keep, Path(tmp))
    return {t: np.concatenate(parts) for t, parts in held.items()}


def _magnitude(w: np.ndarray, layer: Layer, settings: QdqSettings) -> np.ndarray:
    """The largest weight magnitude of each channel (or of the tensor), broadcastable to `w`: what sets ORT's scale."""
    if not settings.per_channel:
        return np.array(np.abs(w).max())
    shape = [1] * w.ndim
    shape[layer.out_axis] = -1
    return channel_max(w, layer.out_axis).reshape(shape)


def _bounds(grid: Grid, magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integers a learnt weight may take: on the grid and no larger in magnitude than the pinned weights (a uint8
    grid reaches 128 steps below its zero point but only 127.5 steps of scale fit in the magnitude)."""
    steps = np.floor(magnitude / grid.scale + 1e-4)
    return np.maximum(grid.qmin, grid.zero - steps), np.minimum(grid.qmax, grid.zero + steps)


def _rectified(v: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def learn_rounding(layer: Layer, x: torch.Tensor, w: np.ndarray, b: np.ndarray | None, grid: Grid,
                   pinned: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], steps: int, seed: int = 0
                   ) -> np.ndarray:
    """The integer weights (on `grid`, within `bounds` but where `pinned`) whose rounding AdaRound learnt on `x`."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    wt = torch.from_numpy(w.astype(np.float32))
    bt = None if b is None else torch.from_numpy(b.astype(np.float32))
    scale, zero = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (grid.scale, grid.zero))
    nearest = torch.from_numpy(grid.integers(w).astype(np.float32))
    pin = torch.from_numpy(pinned)
    floor = torch.floor(wt / scale + zero)
    rest = (wt / scale + zero - floor).clamp(1e-4, 1 - 1e-4)
    p = (rest - GAMMA) / (ZETA - GAMMA)
    v = torch.log(p / (1 - p)).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)

    low, high = (torch.from_numpy(np.broadcast_to(a, w.shape).astype(np.float32)) for a in bounds)

    def weights(h: torch.Tensor) -> torch.Tensor:
        q = torch.where(pin, nearest, torch.clamp(floor + h, low, high))
        return (q - zero) * scale

    with torch.no_grad():
        reference = forward(layer, x, wt, bt)
        power = float(reference.square().mean()) or 1.0
        base = float((forward(layer, x, weights((nearest - floor).clamp(0, 1)), bt) - reference).square().mean())
    weight = REGULARIZER * max(base / power, 1e-12)
    warm = int(WARMUP * steps)
    for step in range(steps):
        idx = torch.randperm(len(x), generator=generator)[:BATCH]
        h = _rectified(v)
        loss = (forward(layer, x[idx], weights(h), bt) - reference[idx]).square().mean() / power
        if step >= warm:
            t = (step - warm) / max(1, steps - warm)
            beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - t)
            loss = loss + weight * (1 - (2 * h - 1).abs().pow(beta)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        hard = (_rectified(v) >= 0.5).float()
        return torch.where(pin, nearest, torch.clamp(floor + hard, low, high)).numpy()


def _output_sqnr(layer: Layer, x: torch.Tensor, w: np.ndarray, wq: np.ndarray, b: np.ndarray | None) -> float:
    import torch

    bt = None if b is None else torch.from_numpy(b)
    with torch.no_grad():
        ref = forward(layer, x, torch.from_numpy(w), bt).double()
        got = forward(layer, x, torch.from_numpy(wq), bt).double()
    return sqnr_db(float(ref.square().sum()), float((ref - got).square().sum()))


def adaround(prepared: Path, calibration: CalibrationSet, options: AdaRoundOptions, settings: QdqSettings
             ) -> AlgorithmRun:
    """Learn the rounding of every layer where it lowers the layer's held-out output error, and keep what was learnt
    where the model's output, its weights quantized, measures closer to float with it."""
    import torch

    graph = Graph.load(prepared)
    layers = [la for la in find_layers(graph, settings) if la.input in graph.value_infos]
    if not layers:
        return AlgorithmRun()
    values = initial_values(graph, [n for la in layers for n in (la.weight, la.bias)])
    changed: dict[str, np.ndarray] = {}
    done = []
    with progress.stage(f"AdaRound ({len(layers)} layers)"):
        for chunk in _chunks(graph, layers, settings.analysis_samples):
            inputs = _collect(prepared, graph, chunk, calibration, settings)
            for la in chunk:
                x = torch.from_numpy(inputs[la.input])
                done.append(_round_layer(la, x, values, settings, options.steps, changed))
                progress.count(len(done), len(layers))
    if not changed:
        return AlgorithmRun(done)
    # each layer's gain is measured on its own float inputs; kept only if the whole model's output gains too
    model_before = quantized_output_sqnr(prepared, layers, values, calibration, settings)
    model_after = quantized_output_sqnr(prepared, layers, {**values, **changed}, calibration, settings)
    kept = model_after >= model_before + MIN_GAIN_DB
    if kept:
        write_values(graph, changed, prepared)
    return AlgorithmRun([*done, {"model_output_sqnr_db_before": model_before, "model_output_sqnr_db_after": model_after,
                                 "kept": kept}])


def _round_layer(layer: Layer, x: torch.Tensor, values: dict[str, np.ndarray], settings: QdqSettings, steps: int,
                 changed: dict[str, np.ndarray]) -> dict[str, Any]:
    """Learn one layer's rounding on most of `x`; keep it in `changed` where the rest of `x` measures it better."""
    w, b = values[layer.weight], values.get(layer.bias) if layer.bias else None
    hold = max(1, int(len(x) * HELD_OUT)) if len(x) > 1 else 0
    train, test = (x[:-hold], x[-hold:]) if hold else (x, x)
    grid = weight_grid(w, layer, settings)
    nearest = grid.integers(w)
    magnitude = _magnitude(w, layer, settings)
    pinned = np.abs(w) == magnitude  # the weights that set ORT's scale: written as they are
    learnt = learn_rounding(layer, train, w, b, grid, pinned, _bounds(grid, magnitude), steps)
    written = np.where(pinned, w, grid.values(learnt)).astype(np.float32)
    exact = bool(np.array_equal(weight_grid(written, layer, settings).integers(written), learnt))
    before = _output_sqnr(layer, test, w, grid.values(nearest), b)
    after = _output_sqnr(layer, test, w, grid.values(learnt), b)
    kept = exact and after > before
    if kept:
        changed[layer.weight] = written
    return {"layer": layer.name, "samples": len(x), "held_out": len(test), "steps": steps,
            "flipped": round(float((learnt != nearest).mean()), 4), "held_out_sqnr_db_nearest": before,
            "held_out_sqnr_db_adaround": after, "kept": kept, **({} if exact else {"why": "not on ORT's grid"})}


ALGORITHM = Algorithm("adaround", "Learns whether each weight rounds up or down to reconstruct its layer's output.",
                      AdaRoundOptions, adaround, reads=READS)
