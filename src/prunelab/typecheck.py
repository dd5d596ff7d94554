"""Type checks of user-given values against the annotations of configs, method options and
model options, before anything runs: `epochs: "ten"`, `eval_train: "no"`, `epochs: 2.7` or
`widths=abc` get one line naming the key path and the expected type (ConfigError).

Values are checked, never converted (an int given for a float stays an int, so a run's config
and its hash are what the user wrote). Supported annotations: bool, int, float (ints accepted;
bools never count as numbers), str, None, unions, Literal, list/tuple/Sequence[X],
dict/Mapping, Any, and classes (isinstance); anything else passes unchecked.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from prunelab.errors import ConfigError

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
_MAPPINGS = (dict, collections.abc.Mapping)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(hint)]
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in _SEQUENCES or hint in (list, tuple):
        args = typing.get_args(hint)
        inner = _describe(args[0]) if args and args[0] is not Ellipsis else None
        return "a list" + (f" of {_plural(inner)}" if inner else "")
    if origin in _MAPPINGS or hint in (dict,):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _plural(text: str) -> str:
    for single, many in (("an integer", "integers"), ("a number", "numbers"),
                         ("a string", "strings"), ("true or false", "booleans")):
        text = text.replace(single, many)
    return text


def matches(value: Any, hint: Any) -> bool:
    """True when `value` fits the annotation `hint` (see the module docstring)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(float(value)))
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in _SEQUENCES or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(hint)
        if not args or args[0] is Ellipsis:
            return True
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return all(matches(v, args[0]) for v in value)
    if origin in _MAPPINGS or hint in (dict,):
        return isinstance(value, Mapping)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation we do not model (TypeVar, Callable, ...)


def check(value: Any, hint: Any, path: str) -> None:
    """Raise ConfigError "PATH must be TYPE, got VALUE" unless `value` fits `hint`."""
    if not matches(value, hint):
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise ConfigError(f"{path} must be {_describe(hint)}, got {shown}")


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's init fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def check_fields(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Check each given value against the dataclass field of that name (unknown keys are the
    caller's business)."""
    hints = field_hints(cls)
    for key, value in values.items():
        if key in hints:
            check(value, hints[key], f"{where}{key}")


def check_call(fn: Callable[..., Any], values: Mapping[str, Any], where: str) -> None:
    """Check keyword values against a function's annotated parameters."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: nothing to check against
        return
    for key, value in values.items():
        if key in hints:
            check(value, hints[key], f"{where}{key}")
