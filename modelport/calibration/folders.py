"""Find data files in a directory, with class labels where the files sit in one subfolder per class.

The layout is the one torchvision's ImageFolder made common: `DIR/<class>/**/file` gives each file the
index of its class in the sorted class names; files directly in `DIR` (and no class folders) have no
labels. Mixing the two is ambiguous, so it is an error rather than a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelport.errors import BadInput


@dataclass(frozen=True)
class Folder:
    """The data files of a directory in a stable order, and their class labels where there are any."""

    root: Path
    files: list[Path]
    labels: list[int] | None
    classes: list[str] | None


def _matching(paths: Iterable[Path], suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in paths if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def scan_folder(root: Path, suffixes: tuple[str, ...], what: str) -> Folder:
    """The files with `suffixes` in `root` (flat) or in its class subfolders (searched recursively)."""
    if not root.is_dir():
        raise BadInput(f"The {what} directory {str(root)!r} does not exist.")
    flat = _matching(root.iterdir(), suffixes)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = {d.name: _matching(d.rglob("*"), suffixes) for d in class_dirs}
    per_class = {name: files for name, files in per_class.items() if files}
    if flat and per_class:
        raise BadInput(f"{str(root)!r} has {what} files both directly inside it ({flat[0].name}, ...) and in "
                       f"subfolders ({', '.join(list(per_class)[:3])}, ...).",
                       hint="Put every file in a class subfolder (for labels) or all directly in the directory.")
    if per_class:
        classes = sorted(per_class)
        files = [f for c in classes for f in per_class[c]]
        labels = [i for i, c in enumerate(classes) for _ in per_class[c]]
        return Folder(root, files, labels, classes)
    if not flat:
        raise BadInput(f"{str(root)!r} holds no {what} files ({', '.join(suffixes)}).",
                       hint="Check the path; class subfolders are searched too.")
    return Folder(root, flat, None, None)
