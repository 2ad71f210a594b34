"""Build options, declared once: what `--option key=value` takes, its default, its choices and the precisions
it applies to. Backends declare theirs with `Option`, the shared QDQ pass derives its own (`quantize/`), and
the CLI help, validation and manifests read those declarations; this module sits below all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


def parse_list(text: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(text, str):
        return tuple(p.strip() for p in text.split(",") if p.strip())
    return tuple(text)


@dataclass(frozen=True, kw_only=True)
class Option:
    """A named build option: how to read it from `--option key=value`, its default and where it applies."""

    name: str
    help: str
    default: Any = None
    parse: Callable[[Any], Any] = str
    choices: tuple[Any, ...] | None = None
    precisions: tuple[str, ...] = PRECISIONS
