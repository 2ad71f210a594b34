"""DIR/results.jsonl: one JSON object per line, appended as each row finishes.

Two record types: `run` (once per `modelport bench` invocation: the model, the machine, package
versions, the settings and the plan's keys) and `row` (one backend x precision x batch measurement,
typed as `Row`). Both are checked against `_SCHEMAS` as they are read.
A row's `key` hashes everything its numbers depend on; a re-run skips plan items whose key already
has an `ok` row, and re-measures failed ones. Readers take the last row per key, so the file is an
append-only log that an interrupted run leaves valid (a torn last line is skipped).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from modelport.errors import BadInput, ModelportWarning

RESULTS = "results.jsonl"
SCHEMA = 1
PYTORCH = "pytorch"  # the backend name of the baseline rows
_APPENDING = threading.Lock()  # a cluster run's devices write their rows from threads of their own


def row_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def clean(value: Any) -> Any:
    """Strict-JSON values: NaN and infinities become None; numpy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append(path: Path, record: Mapping[str, Any]) -> None:
    """Append one record as one line, flushed to disk before returning.

    The line starts on a fresh line: after a torn last line (a run killed mid-write) the record would
    otherwise be glued onto it, and both would be lost to every reader.
    """
    line = (json.dumps(clean({"schema": SCHEMA, **record}), allow_nan=False, default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _APPENDING, open(path, "a+b") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


_NUM = (int, float, None)
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object", None: "null"}
# What readers index or compute with, per record type: a field -> a type, a tuple of choices (None: may be null
# or absent), or a dict (an object with these fields). Fields not named are passed through unchecked.
_LATENCY = ({k: _NUM for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "throughput",
                               "iterations", "peak_rss_bytes", "runner_rss_bytes")} | {"round_ms": (list, None)}, None)
_FIDELITY = ({"summary": ({k: _NUM for k in ("top1_agreement", "cosine", "sqnr_db", "max_abs")}
                          | {"identical": (bool, None), "nonfinite": (int, None)}, None),
              "metric": ({"name": (str, None), "value": _NUM, "delta": _NUM}, None)}, None)
_MODEL = {"name": str, "origin": str, "content_hash": str, "inputs": list}
_SCHEMAS: dict[str, dict[str, Any]] = {
    "run": {"run": str, "model": _MODEL, "machine": dict, "versions": dict, "load_average": _NUM,
            "settings": {"threads": int, "warmup": int, "iterations": (int, None), "duration": _NUM},
            "data": ({"evaluation": (dict, None), "calibration": (dict, None)}, None),
            "reference_metric": ({"name": str, "value": _NUM}, None), "plan": list},
    "row": {"key": str, "model": _MODEL, "backend": str, "title": (str, None), "precision": str,
            "options": (dict, None), "batch": int, "threads": int, "status": str, "stage": (str, None),
            "reason": (str, None), "evaluation": (dict, None), "artifact": (dict, None), "latency": _LATENCY,
            "fidelity": _FIDELITY, "time": (str, None), "device": (str, None)},
}
_PLAN_ITEM = {"backend": str, "precision": str, "batch": int, "status": str, "key": str, "reason": (str, None)}


def _problem(value: Any, schema: Any, name: str) -> str | None:
    """What is wrong with `value` against `schema` (see _SCHEMAS), or None."""
    choices = schema if isinstance(schema, tuple) else (schema,)
    for choice in choices:
        if choice is None and value is None:
            return None
        if isinstance(choice, dict) and isinstance(value, dict):
            for key, sub in choice.items():
                if key not in value and not (isinstance(sub, tuple) and None in sub):
                    return f"{name}.{key} is missing".lstrip(".")
                if (problem := _problem(value.get(key), sub, f"{name}.{key}")) is not None:
                    return problem
            return None
        if isinstance(choice, type) and isinstance(value, choice) and not (
                isinstance(value, bool) and choice is not bool):
            return None
    wanted = " or ".join(_TYPE_NAMES.get(dict if isinstance(c, dict) else c, str(c)) for c in choices)
    return f"{name.lstrip('.')} is {json.dumps(value, default=str)[:40]}, not {wanted}"


def record_problem(record: Any) -> str | None:
    """Why a parsed results line cannot be read as a record, or None; unknown record types are not checked."""
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object"
    schema = _SCHEMAS.get(record.get("type"))  # type: ignore[arg-type]
    if schema is None:
        return None
    problem = _problem(record, schema, "")
    if problem is None and record["type"] == "run":
        problem = next((p for i, item in enumerate(record["plan"])
                        if (p := _problem(item, _PLAN_ITEM, f"plan[{i}]")) is not None), None)
    return problem


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every well-formed record, in order. A line that is not one (an interrupted write, a hand edit, another
    tool's data) is skipped with a warning naming the file, the line and what is wrong with it."""
    if not path.is_file():
        raise BadInput(f"No {RESULTS} in {str(path.parent)!r}.",
                       hint="Run `modelport bench MODEL -o DIR` first; `modelport report DIR` reads DIR/results.jsonl.")
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; bytes, so that one bad line cannot stop the rest
    except OSError as exc:
        raise BadInput(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    with f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                _skipped(path, number, "is not valid UTF-8")
                continue
            except json.JSONDecodeError:
                _skipped(path, number, "is not valid JSON (an interrupted write?)")
                continue
            problem = record_problem(record)
            if problem is not None:
                _skipped(path, number, f"is not a bench record: {problem}")
            elif record.get("type") in ("run", "row"):
                yield record


@dataclass(frozen=True, kw_only=True)
class Row:
    """One backend x precision x batch measurement: a `row` record, as the bench writes it and reports read it.

    `latency`, `fidelity` and `artifact` stay the JSON objects they are on disk (fidelity.py and latency.py
    define them); fields are in the order the lines have always had.
    """

    key: str
    run: str | None = None
    time: str | None = None
    model: dict[str, Any]
    backend: str
    title: str | None
    kind: str | None = None  # "torch", "artifact" or "python"
    precision: str
    options: dict[str, Any] | None = None
    batch: int
    threads: int
    status: str  # ok, failed, skipped or unavailable
    stage: str | None = None  # where a failed row failed
    reason: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    artifact: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    device: str | None = None  # the device label of a cluster run (--measure-on); latency.node says which node

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Row:
        """The row a parsed `row` record holds; ValueError says what is wrong with one that is not (see _SCHEMAS).

        Fields it does not know are dropped; a row without a title (older files) is titled by its backend.
        """
        if record.get("type") != "row" or (problem := record_problem(record)) is not None:
            raise ValueError(f"not a row record: {problem or 'its type is not row'}")
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in record.items() if k in known}
        return cls(**{**given, "title": record.get("title", record["backend"])})

    def to_json(self) -> dict[str, Any]:
        """The record `append` writes."""
        return {"type": "row", **{f.name: getattr(self, f.name) for f in fields(self)}}

    def fidelity_part(self, name: str) -> dict[str, Any]:
        """`summary` or `metric` of the fidelity record, {} where there is none."""
        return (self.fidelity or {}).get(name) or {}


def _skipped(path: Path, number: int, why: str) -> None:
    warnings.warn(f"{path}:{number} {why}; skipped.", ModelportWarning, stacklevel=3)


def measured_keys(path: Path) -> set[str]:
    """Keys that already have an `ok` row: what a re-run skips."""
    if not path.is_file():
        return set()
    return {r["key"] for r in read(path) if r["type"] == "row" and r["status"] == "ok"}
