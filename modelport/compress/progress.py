"""Progress of a compression run on stderr: one bar per step, its epochs with loss, eval metric and ETA."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from modelport.compress.train import EpochRecord
from modelport.console import KEEP_STREAMS, err_console


class EpochProgress:
    """Silent when disabled (under --json); each finished epoch prints one line that stays."""

    def __init__(self, enabled: bool, metric: str) -> None:
        self.enabled = enabled
        self.metric = metric
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[last]}"), TextColumn("ETA"), TimeRemainingColumn(),
                            console=err_console, transient=True, disable=not enabled,
                            **KEEP_STREAMS)
        self.task: TaskID | None = None
        self.label = ""

    def __enter__(self) -> EpochProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.__exit__(kind, exc, tb)

    def start(self, label: str, epochs: int, done: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.label = label
        self.task = self.bar.add_task(label, total=max(epochs, 1), completed=done if epochs else 1,
                                      last="resumed" if done else "")

    def advance(self, record: EpochRecord) -> None:
        metric = "-" if record.metric is None else f"{record.metric:.2f}"
        line = f"loss {record.loss:.4f}  {self.metric} {metric}"
        if self.enabled:
            self.bar.console.print(f"{self.label} epoch {record.epoch}: {line} ({record.seconds:.1f} s)",
                                   highlight=False)
        assert self.task is not None
        self.bar.update(self.task, advance=1, last=line)
