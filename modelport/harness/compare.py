"""`modelport compare BASE NEW`: the regression gate between two bench runs.

BASE and NEW are bench output directories (read through `build_report`, from results.jsonl alone) or
saved report.json files. Rows are matched by (backend, precision, batch, and device on a cluster); each
pair gets the relative change of p50 and p99, the fidelity change (task metric points, SQNR dB, cosine) and
the relative size change. A row only in one side is `new` or `gone`, never a regression; a row that was ok
and is not now is `failed`, a regression.

Noise rule: a run's spread is p90 - p50 of its timed runs (std where p90 is missing): the upper half of
the distribution, which a slower run shifts first, and unlike std not inflated by a few stalls. The noise
band of a pair is sqrt(spread_base² + spread_new²), both runs' spreads combined as independent errors. A
p50 change inside the band is `same`. A latency regression is a p50 slowdown beyond `max_slowdown` AND
beyond the band, so a noisy run never fails the gate on its own noise. p99 is reported but not judged: a
tail over ~100 runs moves with any stall on the machine.

Fidelity regression: the task metric (where both rows have one) falls by more than `max_fidelity_drop`
points; without one, SQNR falls by more than `max_sqnr_drop` dB to below SQNR_CEILING; or outputs turn
NaN/Inf. Cosine is reported only: near 1 it hides what SQNR shows. Size is reported only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelport.errors import BadInput
from modelport.harness import results
from modelport.harness.report.aggregate import ReportRow, build_report

# Above this SQNR an output matches the reference to float32 rounding: a change up there is a different
# kernel's rounding, not lost fidelity, so it is never a regression.
SQNR_CEILING = 60.0
REGRESSIONS = ("regressed", "failed")
REPORT = "report.json"


@dataclass(frozen=True)
class Thresholds:
    """What counts as a regression; the CLI's defaults and help read these."""

    max_slowdown: float = 0.05  # relative p50 slowdown (0.05 = 5%), beyond the noise band as well
    max_fidelity_drop: float = 0.5  # task metric points (percentage points for top-1 accuracy)
    max_sqnr_drop: float = 3.0  # dB, for rows without a task metric, below SQNR_CEILING


def parse_percent(text: str, flag: str) -> float:
    """'5%' or '5' as 0.05: thresholds on relative changes are written in percent."""
    try:
        value = float(text.strip().removesuffix("%")) / 100
    except ValueError:
        raise BadInput(f"Cannot parse {flag} {text!r}.", hint=f"Write a percentage, e.g. {flag} 5%.") from None
    if not math.isfinite(value) or value < 0:
        raise BadInput(f"{flag} {text!r}: give a non-negative percentage, e.g. {flag} 5%.")
    return value


def load(path: Path) -> dict[str, Any]:
    """The report data of a bench directory, of a saved report.json, or of a directory holding only one."""
    if path.is_dir():
        if (path / results.RESULTS).is_file() or not (path / REPORT).is_file():
            return build_report(path)
        path = path / REPORT
    if not path.is_file():
        raise BadInput(f"{str(path)!r} does not exist.",
                       hint="Name a `modelport bench -o DIR` directory or a report.json it wrote.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"Cannot read {path} as a report.json: {exc}.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) \
            or not isinstance(data.get("machine"), dict) or not isinstance(data.get("model"), dict):
        raise BadInput(f"{path} is not a modelport report.json (no rows, machine or model).",
                       hint="Name the report.json that `modelport bench` or `modelport report` wrote.")
    try:
        [ReportRow.from_json(r) for r in data["rows"]]
    except TypeError as exc:
        raise BadInput(f"{path} holds a row that is not a report row: {exc}.") from exc
    return data


def spread_ms(r: ReportRow) -> float:
    """The run's own spread: p90 - p50, else std, else 0 (see the module docstring)."""
    if r.p90_ms is not None and r.p50_ms is not None:
        return max(r.p90_ms - r.p50_ms, 0.0)
    return r.std_ms or 0.0


def _relative(base: float | None, new: float | None) -> float | None:
    return None if base is None or new is None or base == 0 else new / base - 1


def _sqnr(r: ReportRow) -> float | None:
    return math.inf if r.identical else r.sqnr_db


def _delta(base: float | None, new: float | None) -> float | None:
    if base is None or new is None:
        return None
    if math.isinf(base) or math.isinf(new):  # identical outputs: no finite SQNR
        return 0.0 if base == new else None
    return new - base


def _fidelity(base: ReportRow, new: ReportRow, th: Thresholds) -> tuple[dict[str, float | None], list[str]]:
    """The fidelity change and the reasons it is a regression (none: it is not)."""
    change = {"metric": _delta(base.metric, new.metric), "sqnr_db": _delta(_sqnr(base), _sqnr(new)),
              "cosine": _delta(base.cosine, new.cosine)}
    reasons = []
    if (new.nonfinite or 0) > (base.nonfinite or 0):
        reasons.append(f"{new.nonfinite} NaN/Inf outputs")
    if base.metric is not None and new.metric is not None:
        if base.metric - new.metric > th.max_fidelity_drop:
            reasons.append(f"{new.metric_name or 'task metric'} fell {base.metric - new.metric:.2f} points "
                           f"(more than {th.max_fidelity_drop:g})")
    elif (b := _sqnr(base)) is not None and (n := _sqnr(new)) is not None and n < SQNR_CEILING \
            and b - n > th.max_sqnr_drop:
        reasons.append(f"SQNR fell to {n:.1f} dB" + ("" if math.isinf(b) else f" from {b:.1f} dB")
                       + f" (more than {th.max_sqnr_drop:g} dB)")
    return change, reasons


def compare_pair(base: ReportRow, new: ReportRow, th: Thresholds) -> dict[str, Any]:
    """One matched row: its changes, its status and why (see the module docstring)."""
    out: dict[str, Any] = {"p50_change": _relative(base.p50_ms, new.p50_ms),
                           "p99_change": _relative(base.p99_ms, new.p99_ms),
                           "fidelity_change": None, "size_change": _relative(base.size_bytes, new.size_bytes),
                           "base_p50_ms": base.p50_ms, "new_p50_ms": new.p50_ms, "noise_ms": None, "reasons": []}
    if base.status != "ok" or new.status != "ok":
        if base.status == "ok":
            return {**out, "status": "failed", "reasons": [f"{new.status}: {new.reason or 'no reason recorded'}"]}
        was = f"{base.status} in BASE" + (f": {base.reason}" if base.reason else "")
        return {**out, "status": "new" if new.status == "ok" else "same", "reasons": [was]}
    out["fidelity_change"], reasons = _fidelity(base, new, th)
    status = "same"
    if base.p50_ms is not None and new.p50_ms is not None:
        noise = math.hypot(spread_ms(base), spread_ms(new))
        diff = new.p50_ms - base.p50_ms
        out["noise_ms"] = noise
        if abs(diff) > noise:
            status = "slower" if diff > 0 else "faster"
        if status == "slower" and out["p50_change"] is not None and out["p50_change"] > th.max_slowdown:
            reasons.insert(0, f"p50 {out['p50_change']:+.1%} (more than {th.max_slowdown:.0%}, "
                              f"outside the runs' noise band of ±{noise:.3g} ms)")
    return {**out, "status": "regressed" if reasons else status, "reasons": reasons}


def _by_key(rows: Sequence[Mapping[str, Any]], side: str, warnings: list[str]) -> dict[tuple, ReportRow]:
    """Rows by (backend, precision, batch, device); where several share one (other threads or options), the first."""
    out: dict[tuple, ReportRow] = {}
    for r in map(ReportRow.from_json, rows):
        key = (r.backend, r.precision, r.batch, r.device)
        if key in out:
            warnings.append(f"{side} has several {r.backend} {r.precision} batch {r.batch} rows (other thread "
                            "counts or options); compared the first.")
            continue
        out[key] = r
    return out


def _machine_warnings(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    def where(report: Mapping[str, Any]) -> str:
        m, threads = report["machine"], (report.get("settings") or {}).get("threads")
        return f"{m.get('cpu')}, {m.get('cores')} cores" + (f", {threads} thread(s)" if threads else "")

    if where(base) == where(new):
        return []
    return [f"BASE and NEW ran on different machines or thread counts (BASE: {where(base)}; NEW: {where(new)}): "
            "latency changes measure the machines as much as the change."]


def compare(base_path: Path, new_path: Path, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """The comparison as plain JSON: what `--json` prints and the renderers read."""
    th = thresholds or Thresholds()
    base, new = load(base_path), load(new_path)
    warnings = _machine_warnings(base, new) + [f"{side}: {w}" for side, report in (("BASE", base), ("NEW", new))
                                               for w in report.get("warnings", [])]
    base_rows, new_rows = _by_key(base["rows"], "BASE", warnings), _by_key(new["rows"], "NEW", warnings)
    rows = []
    for key in [*new_rows, *(k for k in base_rows if k not in new_rows)]:
        b, n = base_rows.get(key), new_rows.get(key)
        if b is not None and n is not None:
            pair = compare_pair(b, n, th)
        else:
            only = n or b
            assert only is not None
            pair = {"status": "new" if n else "gone", "p50_change": None, "p99_change": None,
                    "fidelity_change": None, "size_change": None, "base_p50_ms": b and b.p50_ms,
                    "new_p50_ms": n and n.p50_ms, "noise_ms": None,
                    "reasons": [] if only.status == "ok" else [f"{only.status}: {only.reason or ''}".rstrip(": ")]}
        row = n or b
        assert row is not None
        rows.append({"backend": row.backend, "title": row.title, "precision": row.precision, "batch": row.batch,
                     **({"device": row.device} if row.device else {}), **pair})
    return results.clean({"base": str(base_path), "new": str(new_path), "model": new["model"]["name"],
                          "thresholds": asdict(th), "warnings": warnings, "rows": rows,
                          "regressions": sum(r["status"] in REGRESSIONS for r in rows)})
