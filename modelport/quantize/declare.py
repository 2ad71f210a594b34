"""One declaration per knob: a dataclass field whose metadata holds its help, parser, choices, `--option` key
and precisions; validation, backends' Option lists, `modelport backends --options` and the manifest read it.

A settings class is a frozen keyword-only dataclass deriving from `Declared` whose fields are made with
`setting` (a build option users set) or `decided` (set by the backend, e.g. from the CPU, never by users).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from modelport.errors import BadInput
from modelport.options import Option, parse_list

INT8 = ("int8",)


@dataclass(frozen=True)
class Setting:
    """How one field is documented, read from `--option` text and checked."""

    help: str
    parse: Callable[[Any], Any]
    choices: tuple[Any, ...] | None = None
    key: str | None = None  # the --option key where it differs from the field name
    option: bool = True     # False: the backend decides it; no --option
    precisions: tuple[str, ...] = INT8


def setting(default: Any, help: str, parse: Callable[[Any], Any], *, choices: tuple[Any, ...] | None = None,
            key: str | None = None, precisions: tuple[str, ...] = INT8) -> Any:
    """A field users set with `--option KEY=VALUE` (KEY is the field name unless `key` says otherwise)."""
    return field(default=default, metadata={"setting": Setting(help, parse, choices, key, True, precisions)})


def decided(default: Any, help: str, parse: Callable[[Any], Any], *, choices: tuple[Any, ...] | None = None) -> Any:
    """A field the calling backend decides (from the CPU, the graph, the runtime's needs); no --option."""
    return field(default=default, metadata={"setting": Setting(help, parse, choices, option=False)})


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`parse`, with None meaning unset."""
    return lambda value: None if value is None else parse(value)


def fraction(value: Any) -> float | None:
    """A number between 0 and 1, where 0 (or None) turns the knob off."""
    if value is None:
        return None
    number = float(value)
    if not 0 <= number <= 1:
        raise ValueError("expected a number between 0 and 1 (0 disables)")
    return number


def positive(value: Any) -> int:
    count = int(value)
    if count < 1:
        raise ValueError("expected a positive number of samples")
    return count


def names(value: Any) -> tuple[str, ...]:
    """Comma-separated text or a sequence of names; None is none."""
    return () if value is None else parse_list(value)


class Declared:
    """Base of settings dataclasses: each `setting`/`decided` field is parsed and checked on construction."""

    title: ClassVar[str] = "setting"  # how messages name one field: "QDQ setting", "smoothquant option"

    def __post_init__(self) -> None:
        for f, s in self.declared():
            value = getattr(self, f.name)
            try:
                parsed = s.parse(value)
            except (TypeError, ValueError) as exc:
                raise BadInput(f"The {self.title} {f.name}={value!r}: {exc}.", hint=s.help) from None
            if s.choices and parsed is not None and parsed not in s.choices:
                raise BadInput(f"The {self.title} {f.name}={parsed!r} is not one of "
                               f"{', '.join(map(str, s.choices))}.", hint=s.help)
            object.__setattr__(self, f.name, parsed)

    @property
    def enabled(self) -> bool:
        """Whether these settings ask for their work to be done (an algorithm's options may turn it off)."""
        return True

    @classmethod
    def declared(cls) -> list[tuple[dataclasses.Field, Setting]]:
        return [(f, f.metadata["setting"]) for f in dataclasses.fields(cls) if "setting" in f.metadata]

    @classmethod
    def as_options(cls) -> tuple[Option, ...]:
        """The build options users set, as a backend lists them."""
        return tuple(_option(f, s) for f, s in cls.declared() if s.option)

    @classmethod
    def as_option(cls, field_name: str, /, **changes: Any) -> Option:
        """The build option of `field_name`, with `changes` (another name, default...) for one backend's listing."""
        f, s = next((f, s) for f, s in cls.declared() if f.name == field_name and s.option)
        return dataclasses.replace(_option(f, s), **changes)

    @classmethod
    def from_options(cls, values: Mapping[str, Any], **decided_values: Any) -> Self:
        """The settings held in a backend's validated options (keys not declared here are the backend's own),
        with the fields the backend decides."""
        given = {f.name: values[_key(f, s)] for f, s in cls.declared() if s.option and _key(f, s) in values}
        return cls(**{**given, **decided_values})

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` (field names), checked again; names the class does not declare are errors."""
        known = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise BadInput(f"Unknown {self.title}(s) {', '.join(unknown)}.", hint=f"Known: {', '.join(known)}.")
        return dataclasses.replace(self, **changes)

    def record(self) -> dict[str, Any]:
        """Every field as JSON, for the manifest."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _key(f: dataclasses.Field, s: Setting) -> str:
    return s.key or f.name


def _option(f: dataclasses.Field, s: Setting) -> Option:
    return Option(name=_key(f, s), help=s.help, default=f.default, parse=s.parse, choices=s.choices,
                  precisions=s.precisions)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Declared):
        return value.record()
    if hasattr(value, "to_json"):  # a parsed value that says what it is (e.g. a ranges file and its hash)
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value
