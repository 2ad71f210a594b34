"""DIR/results.jsonl: one JSON object per line, appended as each row finishes.

Two record types: `run` (once per `modelport bench` invocation: the model, the machine, package
versions, the settings and the plan's keys) and `row` (one backend x precision x batch measurement).
A row's `key` hashes everything its numbers depend on; a re-run skips plan items whose key already
has an `ok` row, and re-measures failed ones. Readers take the last row per key, so the file is an
append-only log that an interrupted run leaves valid (a torn last line is skipped).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from modelport.errors import BadInput

RESULTS = "results.jsonl"
SCHEMA = 1


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
    """Append one record as one line, flushed to disk before returning."""
    line = json.dumps(clean({"schema": SCHEMA, **record}), allow_nan=False, default=str) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every well-formed record, in order; a malformed line (an interrupted write) is skipped with a warning."""
    if not path.is_file():
        raise BadInput(f"No {RESULTS} in {str(path.parent)!r}.",
                       hint="Run `modelport bench MODEL -o DIR` first; `modelport report DIR` reads DIR/results.jsonl.")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number} is not valid JSON (an interrupted write?); skipped.", stacklevel=2)
                continue
            if isinstance(record, dict) and record.get("type") in ("run", "row"):
                yield record


def latest_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The last row written for each key."""
    return {r["key"]: r for r in read(path) if r["type"] == "row"}


def measured_keys(path: Path) -> set[str]:
    """Keys that already have an `ok` row: what a re-run skips."""
    if not path.is_file():
        return set()
    return {r["key"] for r in read(path) if r["type"] == "row" and r.get("status") == "ok"}
