"""Checkpoints of a compression run, so the same command after an interruption resumes where it stopped.

One file holds the run's state after each change and each finished epoch: the whole module (pruning
and factorization change its structure, so a state dict alone cannot be loaded back), the optimizer,
which step and epoch are done, and the records of finished steps. It is written atomically, tied to a
key of the model, data and settings (a different command starts afresh), and removed once the run's
output is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE = "state.pt"


@dataclass
class RunState:
    key: str
    module: torch.nn.Module
    steps: list[dict[str, Any]] = field(default_factory=list)  # records of finished steps
    changed: bool = False  # the current step's technique has been applied
    epoch: int = 0  # finished fine-tuning epochs of the current step
    optimizer: dict | None = None
    current: dict[str, Any] = field(default_factory=dict)  # the current step's record so far


def run_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoints:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self, key: str) -> RunState | None:
        """The saved state of the run with this key, or None (no checkpoint, or one of another run)."""
        path = self.folder / STATE
        if not path.is_file():
            return None
        data = torch.load(path, weights_only=False)
        if data.get("key") != key:
            return None
        return RunState(**data)

    def save(self, state: RunState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{STATE}.tmp{os.getpid()}"
        torch.save(vars(state), tmp)
        tmp.replace(self.folder / STATE)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
