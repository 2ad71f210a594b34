"""Which attention biases are the exporter's padding mask, so fused attention can take the raw mask instead.

For an encoder called with a 2D (batch, seq) `attention_mask`, the torch.export-based exporter writes about 25 small
ops per graph (Range, Unsqueeze, Expand, GatherND, And, Where, ...) that turn the mask into an additive
(batch, 1, seq, seq) bias of 0 where the mask is nonzero and -FLT_MAX where it is 0. ORT's Attention and
MultiHeadAttention take the raw mask instead (`mask_index` / `key_padding_mask`: int32, 0 masked, else kept,
`mask_filter_value` where masked), so that subgraph can die. This module accepts only that exact provenance:

    Where(And(..., GatherND(Cast(mask, bool), [b, k] index grid)), 0, fill)

where the grid's two index tensors are aranges over the mask's own batch and sequence dims placed on the bias'
first and last axes, and every other And term is provably true (a constant True, or an arange compared >= 0).
The Where and its And terms are read by ort_causal.bias_mask, which also proves a causal term beside the
mask (GPT-2's); this module proves the mask term and the always-true ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BATCH_AXIS, KEY_AXIS, BIAS_RANK = 0, 3, 4
BOOL, INT_TYPES = 9, (6, 7, 9)  # onnx TensorProto: BOOL; INT32, INT64, BOOL graph inputs


class NotTheMask(Exception):
    """The bias is not (provably) the exporter's function of a 2D attention mask alone; the message says where."""


def _and_terms(g: Any, name: str) -> list[str]:
    node = g.make("And", name)
    return [name] if node is None else [t for i in node.input for t in _and_terms(g, i)]


def _always_true(g: Any, name: str) -> bool:
    """A constant all-True (or one expanded), or an arange from 0 compared >= 0 (HF's bidirectional mask
    function)."""
    if name in g.const:
        value = g.const[name]
        return value.dtype == np.bool_ and bool(value.all())
    expand = g.make("Expand", name)
    if expand is not None:
        return _always_true(g, expand.input[0])
    ge = g.make("GreaterOrEqual", name)
    if ge is None or g.scalar(ge.input[1]) != 0.0:
        return False
    try:
        _arange(g, ge.input[0])
    except NotTheMask:
        return False
    return True


def _gathered_mask(g: Any, name: str) -> str:
    """GatherND(Cast(mask, bool), grid) with grid[..., :] = (b on the bias' batch axis, k on its key axis)."""
    gather = g.make("GatherND", name)
    if gather is None:
        raise NotTheMask(f"a term of the bias' condition comes from {g.origin(name)}, not a gathered mask")
    cast = g.make("Cast", gather.input[0])
    if cast is None or attribute(gather, "batch_dims", 0) or attribute(cast, "to") != BOOL:
        raise NotTheMask("the gathered mask is not the mask input cast to bool")
    mask = _unflattened(g, cast.input[0])
    if not _is_2d_int_input(g, mask):
        raise NotTheMask(f"{mask} is not a 2D integer graph input")
    concat = g.make("Concat", gather.input[1])
    if concat is None or attribute(concat, "axis") not in (-1, BIAS_RANK) or len(concat.input) != 2:
        raise NotTheMask("the mask's index grid is not a Concat of two index tensors")
    columns = [_grid_column(g, column) for column in concat.input]
    if len({shape for _, shape in columns}) != 1:
        raise NotTheMask("the mask's two index tensors are expanded to different shapes")
    if [found for found, _ in columns] != [(mask, 0, BATCH_AXIS), (mask, 1, KEY_AXIS)]:
        raise NotTheMask("the mask's index grid is not (batch, key) over the mask's own dims on the bias' axes")
    return mask


def _unflattened(g: Any, name: str) -> str:
    """Through Reshape(mask, [mask's dim 0, -1]), which leaves a 2D mask as it is (GPT-2's mask.view(batch, -1))."""
    reshape = g.make("Reshape", name)
    concat = g.make("Concat", reshape.input[1]) if reshape is not None else None
    if concat is None or len(concat.input) != 2 or g.scalar(concat.input[1]) != -1:
        return name
    shape = g.make("Shape", concat.input[0])
    if shape is None or shape.input[0] != reshape.input[0] or attribute(shape, "start", 0) != 0 \
            or attribute(shape, "end") != 1:
        return name
    return reshape.input[0]


def _grid_column(g: Any, name: str) -> tuple[tuple[str, int, int], str]:
    """Unsqueeze(Expand(arange, Shape(Max(a, b))), -1): the arange's (input, dim, axis in the bias), the shape."""
    unsqueeze = g.make("Unsqueeze", name)
    if unsqueeze is None or _axes(g, unsqueeze) not in ([-1], [BIAS_RANK]):
        raise NotTheMask("an index column is not unsqueezed on its last axis")
    expand = g.make("Expand", unsqueeze.input[0])
    shape = g.make("Shape", expand.input[1]) if expand is not None else None
    widest = g.make("Max", shape.input[0]) if shape is not None else None
    if widest is None or attribute(shape, "start", 0) != 0 or attribute(shape, "end") is not None \
            or expand.input[0] not in widest.input:
        raise NotTheMask("an index column is not expanded to the broadcast of the two aranges")
    found = _arange(g, expand.input[0])
    if found[3] != BIAS_RANK or any(_arange(g, i)[3] != BIAS_RANK for i in widest.input):
        raise NotTheMask("an index arange is not placed in a rank-4 bias")
    return found[:3], expand.input[1]


def _arange(g: Any, name: str) -> tuple[str, int, int, int]:
    """Unsqueeze*(Range(0, Squeeze(Shape(x)[d]), 1)): (x, d, the arange's axis, the rank)."""
    inserted = []
    while (unsqueeze := g.make("Unsqueeze", name)) is not None:
        axes = _axes(g, unsqueeze)
        if axes is None:
            raise NotTheMask("an arange is unsqueezed on axes that are not constant")
        inserted.append(axes)
        name = unsqueeze.input[0]
    node = g.make("Range", name)
    if node is None or g.scalar(node.input[0]) != 0 or g.scalar(node.input[2]) != 1:
        raise NotTheMask(f"an index comes from {g.origin(name)}, not an arange from 0 by 1")
    source, dim = _dim_of(g, node.input[1])
    axis, rank = 0, 1
    for axes in reversed(inserted):  # innermost first
        rank += len(axes)
        added = {a % rank for a in axes}
        axis = [i for i in range(rank) if i not in added][axis]
    return source, dim, axis, rank


def _dim_of(g: Any, name: str) -> tuple[str, int]:
    """Squeeze(Shape(x, start=d, end=d+1)): (x, d)."""
    squeeze = g.make("Squeeze", name)
    shape = g.make("Shape", squeeze.input[0]) if squeeze is not None else None
    start = attribute(shape, "start", 0) if shape is not None else None
    if shape is None or start is None or start < 0 or attribute(shape, "end") != start + 1:
        raise NotTheMask("an arange's length is not one dim of a tensor's shape")
    return shape.input[0], int(start)


def _is_2d_int_input(g: Any, name: str) -> bool:
    for value in g.graph.input:
        if value.name == name:
            tensor = value.type.tensor_type
            return tensor.elem_type in INT_TYPES and len(tensor.shape.dim) == 2
    return False


def _axes(g: Any, unsqueeze: Any) -> list[int] | None:
    if len(unsqueeze.input) > 1:
        value = g.const.get(unsqueeze.input[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return attribute(unsqueeze, "axes")


def attribute(node: Any, name: str, default: Any = None) -> Any:
    """An ONNX node attribute's value (repeated ones as a list), or `default` where the node has none."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return list(value) if isinstance(value, list | tuple) else value
    return default
