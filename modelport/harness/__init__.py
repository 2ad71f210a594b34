"""The cross-runtime harness: plan backend x precision, measure each row in isolation, report.

`bench(...)` is `modelport bench`; `build_report`/`write_reports` are `modelport report`.
"""

from modelport.harness.api import bench
from modelport.harness.report import Budget, build_report, write_reports

__all__ = ["Budget", "bench", "build_report", "write_reports"]
