"""Which attention biases are a causal mask (optionally AND-ed with the padding mask), so fused attention can run
`unidirectional=1` instead of adding a (batch, 1, seq, seq) bias.

transformers' masking functions, as the torch.export-based exporter writes them for GPT-2, build the bias as

    Where(And(True, kv_pos <= q_pos, [padded[b, kv]], [same_sequence[b, q] == same_sequence[b, kv]]), 0, fill)

where the positions are aranges placed on the bias' query and key axes, or (with no attention_mask) position ids
gathered at those aranges, and `same_sequence` is the packed-sequence index that transformers derives from the
position ids: cumsum(diff(position_ids) != 1). This module accepts only exact provenance: a comparison of two
positions that are provably the query and key index over one sequence dim (plus one offset on both), and terms
that are provably true everywhere, which it proves by evaluating them over position tensors that are provably
aranges (value = index + offset along the last axis). Position ids from a graph input, or any other term, leave
the bias additive, with the reason. Trilu is not among what it accepts: the exporter does not write one here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelport.backends.ort_mask import (
    BATCH_AXIS,
    BIAS_RANK,
    KEY_AXIS,
    NotTheMask,
    _always_true,
    _and_terms,
    _arange,
    _dim_of,
    _gathered_mask,
    _grid_column,
    attribute,
)

QUERY_AXIS = 2
COMPARISONS = ("LessOrEqual", "GreaterOrEqual", "Less", "Greater")
LARGE_END = 2**31  # a Slice end at least this large means "to the end"

# A length: (the (tensor, dim) it is a dim of, or None for a constant) and an integer added to it
Length = tuple[tuple[str, int] | None, int]


@dataclass(frozen=True)
class AttentionMask:
    """The bias is `fill` where the key is masked (`padding[b, k]` is 0, where there is one) or after the query
    (`causal`), else 0: what Attention computes from `unidirectional` and the raw mask."""

    padding: str | None
    causal: bool
    fill: float


@dataclass(frozen=True)
class _Progression:
    """A tensor whose value is its index along the last axis plus `offset`, that axis `length` long."""

    offset: int
    length: Length
    rank: int


def bias_mask(g: Any, bias: str) -> AttentionMask | None:
    """What an additive attention bias is made of, None where it is 0 everywhere (its condition always true: ViT's),
    or NotTheMask saying why it is not (provably) a padding and/or causal mask."""
    import numpy as np

    where = g.make("Where", bias)
    if where is None:
        raise NotTheMask(f"the bias comes from {g.origin(bias)}, not the exporter's Where over a mask")
    keep, fill = g.scalar(where.input[1]), g.scalar(where.input[2])
    if keep != 0.0 or fill is None or not np.isfinite(fill) or fill >= 0:
        raise NotTheMask("the bias is not Where(mask, 0, a finite negative fill)")
    causal, masks = False, []
    for term in _and_terms(g, where.input[0]):
        if _always_true(g, term):
            continue
        node = g.producer.get(term)
        if node is not None and node.op_type in COMPARISONS:
            _causal_term(g, node)
            causal = True
        elif node is not None and node.op_type == "Equal":
            if _constant(g, term) is not True:
                raise NotTheMask("an Equal term of the bias' condition is not provably true everywhere")
        else:
            masks.append(_gathered_mask(g, term))
    if len(masks) > 1:
        raise NotTheMask(f"the bias' condition reads {len(masks)} masks, not one")
    if not causal and not masks:
        return None
    return AttentionMask(masks[0] if masks else None, causal, fill)


def _causal_term(g: Any, node: Any) -> None:
    """key <= query (or query >= key) over positions provably the bias' key and query index, or NotTheMask."""
    if node.op_type not in ("LessOrEqual", "GreaterOrEqual"):
        raise NotTheMask(f"the bias' condition compares positions with {node.op_type}, not key <= query")
    left, right = (_position(g, i) for i in node.input)
    if node.op_type == "GreaterOrEqual":
        left, right = right, left
    if (left[0], right[0]) != (KEY_AXIS, QUERY_AXIS):
        raise NotTheMask("the bias' comparison is not key position <= query position")
    if left[1:] != right[1:]:
        raise NotTheMask("the query and key positions are not over one sequence dim with one offset")


def _position(g: Any, name: str) -> tuple[int, tuple[str, int], int]:
    """An index of the bias as (its axis, the (tensor, dim) it runs over, an offset added to it): an arange placed
    in the rank-4 bias, or position ids provably an arange gathered at the bias' (batch, that axis) grid."""
    gather = g.make("GatherND", name)
    if gather is None:
        source, dim, axis, rank = _arange(g, name)
        if rank != BIAS_RANK:
            raise NotTheMask("a position arange is not placed in a rank-4 bias")
        return axis, (source, dim), 0
    concat = g.make("Concat", gather.input[1])
    if attribute(gather, "batch_dims", 0) or concat is None or len(concat.input) != 2 \
            or attribute(concat, "axis") not in (-1, BIAS_RANK):
        raise NotTheMask("gathered positions are not indexed by a Concat of two index tensors")
    (batch, _), (index, _) = (_grid_column(g, c) for c in concat.input)
    if batch[2] != BATCH_AXIS or index[2] not in (QUERY_AXIS, KEY_AXIS):
        raise NotTheMask("gathered positions are not indexed at (batch, query or key)")
    ids = _progression(g, gather.input[0])
    if ids.rank != 2:
        raise NotTheMask("the gathered position ids are not (batch, seq)")
    return index[2], index[:2], ids.offset


def _progression(g: Any, name: str) -> _Progression:
    """`name` as an arange along its last axis (index + offset), or NotTheMask: the position ids transformers
    builds when none are given, and the slices, shifts and concatenations its packed-sequence check takes of them."""
    node = g.producer.get(name)
    op = node.op_type if node is not None else None
    if op in ("Range", "Unsqueeze"):
        source, dim, axis, rank = _arange(g, name)
        if axis != rank - 1:
            raise NotTheMask("an arange of positions is not along the last axis")
        return _Progression(0, ((source, dim), 0), rank)
    if op == "Expand":
        shape = g.const.get(node.input[1])
        concat = g.make("Concat", node.input[1])
        last = shape.reshape(-1)[-1] if shape is not None else g.scalar(concat.input[-1]) if concat else None
        if last != 1:
            raise NotTheMask("positions are expanded along their last axis")
        inner = _progression(g, node.input[0])
        rank = int(shape.size) if shape is not None else sum(_size(g, i) for i in concat.input)
        return _Progression(inner.offset, inner.length, max(rank, inner.rank))
    if op in ("Add", "Sub") and g.scalar(node.input[1]) is not None:
        inner, shift = _progression(g, node.input[0]), int(g.scalar(node.input[1]))
        return _Progression(inner.offset + (shift if op == "Add" else -shift), inner.length, inner.rank)
    if op == "Slice":
        return _slice(g, node)
    if op == "Concat" and len(node.input) == 2:
        head, tail = (_progression(g, i) for i in node.input)
        if head.rank != tail.rank or attribute(node, "axis") not in (-1, head.rank - 1) or head.length[0] is not None \
                or tail.offset != head.offset + head.length[1]:
            raise NotTheMask("a Concat of positions does not continue one arange")
        return _Progression(head.offset, (tail.length[0], tail.length[1] + head.length[1]), head.rank)
    raise NotTheMask(f"positions come from {g.origin(name)}, not an arange")


def _slice(g: Any, node: Any) -> _Progression:
    """Slice(p, [start], [end], [last axis], [1]): index + offset + start, min(end, length) - start long."""
    inner = _progression(g, node.input[0])
    axes = g.const.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    steps = g.const.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    start = g.const.get(node.input[1])
    if axes is None or [int(a) for a in axes.reshape(-1)] not in ([-1], [inner.rank - 1]) or start is None \
            or start.size != 1 or int(start.reshape(-1)[0]) < 0 or (steps is not None and steps.reshape(-1)[0] != 1):
        raise NotTheMask("a Slice of positions is not a window of their last axis from a constant start")
    begin = int(start.reshape(-1)[0])
    end = _length(g, node.input[2])
    if end[0] is None and end[1] < begin:
        raise NotTheMask("a Slice of positions ends before it starts")
    return _Progression(inner.offset + begin, _minus(_min(end, inner.length), begin), inner.rank)


def _size(g: Any, name: str) -> int:
    """How many elements a shape piece has: a constant's, or a Shape's slice of one tensor's dims."""
    if name in g.const:
        return int(g.const[name].size)
    shape = g.make("Shape", name)
    start, end = (attribute(shape, "start", 0), attribute(shape, "end")) if shape is not None else (None, None)
    if start is None or end is None or start < 0 or end < start:
        raise NotTheMask("positions are expanded to a shape of unknown rank")
    return end - start


def _length(g: Any, name: str) -> Length:
    """A constant, or one dim of a tensor's shape plus a constant (Shape, Squeeze, Reshape, Add)."""
    value = g.const.get(name)
    if value is not None and value.size == 1:
        return None, int(value.reshape(-1)[0])
    node = g.producer.get(name)
    if node is not None and node.op_type == "Shape":
        start = attribute(node, "start", 0)
        if start is None or start < 0 or attribute(node, "end") != start + 1:
            raise NotTheMask("a length is not one dim of a tensor's shape")
        return (node.input[0], int(start)), 0
    if node is not None and node.op_type == "Squeeze":
        return _dim_of(g, name), 0
    if node is not None and node.op_type == "Reshape":
        return _length(g, node.input[0])
    if node is not None and node.op_type == "Add":
        consts = [g.scalar(i) for i in node.input]
        if consts.count(None) == 1:
            dim, extra = _length(g, node.input[consts.index(None)])
            return dim, extra + int(next(c for c in consts if c is not None))
    raise NotTheMask(f"a length comes from {g.origin(name)}, not a dim of a tensor's shape")


def _min(a: Length, b: Length) -> Length:
    """min of two lengths where it is known for every size of the dims (each at least 1)."""
    if a[0] == b[0]:
        return a[0], min(a[1], b[1])
    constant, dim = (a, b) if a[0] is None else (b, a) if b[0] is None else (None, None)
    if constant is None:
        raise NotTheMask("a Slice's end and its input's length are over different dims")
    if constant[1] >= LARGE_END:
        return dim
    if constant[1] <= 1 + dim[1]:  # dim >= 1
        return constant
    raise NotTheMask("a Slice's end is not comparable with its input's length")


def _minus(length: Length, value: int) -> Length:
    return length[0], length[1] - value


def _constant(g: Any, name: str) -> Any:
    """The one value every element of `name` provably has (a Python scalar), or None where none is proved."""
    if name in g.const:
        value = g.const[name]
        return value.reshape(-1)[0].item() if value.size and (value == value.reshape(-1)[0]).all() else None
    node = g.producer.get(name)
    op = node.op_type if node is not None else None
    try:
        if op == "Sub" and g.scalar(node.input[1]) is None:
            a, b = (_progression(g, i) for i in node.input)
            return a.offset - b.offset if a.length == b.length and a.rank == b.rank else None
    except NotTheMask:
        return None
    if op in ("GatherND", "Expand", "Cast", "CumSum", "Not"):
        value = _constant(g, node.input[0])
        if value is None or op in ("GatherND", "Expand"):
            return value
        if op == "Cast":
            return _cast(value, attribute(node, "to"))
        if op == "Not":
            return not value if isinstance(value, bool) else None
        return value if value == 0 else None  # CumSum of zeros, whatever the axis, exclusive or reversed
    if op == "Equal":
        a, b = (_constant(g, i) for i in node.input)
        return a == b if a is not None and b is not None else None
    return None


def _cast(value: Any, to: int | None) -> Any:
    """A scalar cast to an ONNX integer or bool type (others not proved here)."""
    from onnx import TensorProto

    if to == TensorProto.BOOL:
        return bool(value)
    if to in (TensorProto.INT32, TensorProto.INT64, TensorProto.INT8, TensorProto.UINT8):
        return int(value)
    return None
