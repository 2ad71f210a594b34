"""Importing and calling the code a user names (`file.py:fn`, `package.module:fn`): model factories,
calibration data, metrics, runners. It needs the standard library only, so every layer (calibration, the
harness's measuring processes) can read a user's reference without paying for torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelport.errors import BadInput


@contextlib.contextmanager
def user_code(ref: str, doing: str = "calling") -> Iterator[None]:
    """Run a user's code (import, factory, data or metric callable): what it prints goes to stderr, as stdout
    is modelport's own output (clean JSON under --json); under the CLI that stderr is the command's log of other
    packages' output (quiet.routed; --verbose shows it), since a factory's prints and the libraries it loads
    cannot be told apart; it sees `sys.argv` as `[ref]`, not modelport's
    arguments (so an argparse parser names the user's file); and a sys.exit() in it is a BadInput naming it,
    not modelport exiting silently with the user's code."""
    argv = sys.argv
    sys.argv = [ref]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except SystemExit as exc:
        raise BadInput(f"User code called sys.exit({exc.code!r}) while {doing} {ref!r}.",
                       hint="Perhaps it parses command-line arguments when imported: guard that code with "
                            "`if __name__ == \"__main__\":`.") from None
    finally:
        sys.argv = argv


def import_user_callable(ref: str, what: str = "factory", flag: str = "MODEL") -> tuple[Callable[..., Any], str]:
    """The callable a user names as `path/to/file.py:fn` or `package.module:fn` (a model factory, calibration
    data, a metric, a runner), and a short name for it. Importing it and every call of it run under
    `user_code`, so no user code can exit modelport or write to its stdout. `flag` is where the user named
    it (MODEL, --metric, ...), for the messages."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise BadInput(f"Cannot read {flag} {ref!r}.",
                       hint="Write path/to/file.py:factory, package.module:factory, or a .pt2 file.")
    is_file = target.endswith(".py")
    if is_file and not Path(target).is_file():
        raise BadInput(f"The file {target!r} in {flag} {ref!r} does not exist.", hint=f"Check the path in {flag}.")
    try:
        with user_code(target, "importing"):
            module = _exec_file(Path(target)) if is_file else importlib.import_module(target)
    except Exception as exc:
        if isinstance(exc, BadInput):
            raise
        if isinstance(exc, ImportError) and not is_file:
            raise BadInput(f"Cannot import module {target!r}: {exc}",
                           hint="Use package.module:factory for an importable module, or path/to/file.py:factory."
                           ) from exc
        raise BadInput(f"Importing {target!r} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise BadInput(f"{target!r} has no attribute {attr!r}.")
    fn = getattr(module, attr)
    name = Path(target).stem if is_file else attr
    if not callable(fn):
        raise BadInput(f"{ref!r} is a {type(fn).__name__}, not a callable {what}.",
                       hint=f"Name a function (or another callable) defined in {target!r}.")

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        with user_code(ref):
            return fn(*args, **kwargs)

    return guarded, name


def _exec_file(path: Path) -> types.ModuleType:
    """A user's .py file run as a module of its own (named by its path, so two files never collide)."""
    mod_name = f"_modelport_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module
