"""A SourceModel plus its validated ONNX export, made once and shared by every backend that consumes ONNX.

Exports are cached under MODELPORT_CACHE by the model's content hash and opset, so building four
backends (or re-running a build) exports and validates the model once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from modelport.exporters.onnx import ExportReport, export_onnx
from modelport.machine import cache_dir
from modelport.model import SourceModel

# Bumped when the export checks change what is accepted, so an export cached by an older, laxer check (a
# TorchScript trace that froze control flow, say) is checked again rather than served.
EXPORT_CHECK_VERSION = 2


@dataclass
class ModelBundle:
    source: SourceModel
    opset: int | None = None
    onnx_dir: Path | None = None
    _report: ExportReport | None = field(default=None, repr=False)
    _report_json: dict | None = field(default=None, repr=False)

    @property
    def onnx_path(self) -> Path:
        """The validated ONNX file, exported on first use."""
        return self._ensure_export()

    @property
    def export_info(self) -> dict:
        """The export report as stored beside the cached file (exporter, opset, parity, seconds)."""
        self._ensure_export()
        assert self._report_json is not None
        return self._report_json

    def _ensure_export(self) -> Path:
        base = self.onnx_dir or cache_dir() / "exports"
        folder = base / (f"{self.source.name}-{self.source.content_hash}-opset{self.opset or 'default'}"
                           f"-check{EXPORT_CHECK_VERSION}")
        path, info = folder / "model.onnx", folder / "export.json"
        if self._report_json is None and path.is_file() and info.is_file():
            self._report_json = json.loads(info.read_text())
        if self._report_json is None:
            self._report = export_onnx(self.source, path, opset=self.opset)
            self._report_json = self._report.to_json()
            tmp = info.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._report_json, indent=2))
            tmp.replace(info)
        return path
