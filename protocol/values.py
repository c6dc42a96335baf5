# What a free-form field (a job's payload, machine specs, a request's params, a response's result)
# may hold: exactly the values that both codecs carry, SQLite's JSON functions store and standard
# JSON (`json.loads`) reads back unchanged. One walk, shared by the decoder (what a peer sent) and
# the sender (what the application publishes), so both ends and both codecs agree.
# Invariants: pure (no I/O); walks a value once, iteratively (no recursion to exhaust), and stops
# at the first problem; the typed fields around these values are msgspec's job, not this one's.
from __future__ import annotations

import math
from typing import Any, Final

import msgspec

__all__ = ["MAX_DEPTH", "MAX_INT", "MIN_INT", "free_form_fields", "int_fields", "value_problem"]

MAX_DEPTH: Final = 32
"""Containers (arrays, objects) nested within one free-form value, at most. Far below every
reader's limit (SQLite JSON 1000, msgspec and `json` ~1000 through recursion), so a value that
passes here never fails on another path."""
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**63 - 1
"""Integers are 64-bit signed: what msgpack and SQLite both hold exactly (msgpack's unsigned
2^63..2^64-1 would turn into floats in SQLite's JSON)."""

_SCALARS: Final = (str, bool, type(None))


def value_problem(value: Any, root: str = "$", max_depth: int = MAX_DEPTH) -> str | None:
    """Why ``value`` is not a portable free-form value, or None when it is.

    Accepted: None, bool, str, int in [MIN_INT, MAX_INT], finite float, list, and dict with str
    keys, nested at most ``max_depth`` containers deep. Everything else (bytes, msgpack
    extension types, NaN/Infinity, non-string keys, tuples or other Python objects) is refused.
    The answer names the path below ``root``, e.g. ``$.body.specs.gpus[3]: nan is not a JSON number``.
    """
    # A stack of (value, path parts, depth); the path text is built only for an error message.
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, (), 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, path, depth = pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is int:
            if not MIN_INT <= item <= MAX_INT:
                return f"{_path(root, path)}: integer {item} is outside the 64-bit signed range"
            continue
        if kind is float:
            if not math.isfinite(item):
                return f"{_path(root, path)}: {item!r} is not a JSON number"
            continue
        if kind is list:
            if depth >= max_depth:
                return f"{_path(root, path)}: nested deeper than {max_depth}"
            for index, child in enumerate(item):
                push((child, (*path, index), depth + 1))
            continue
        if kind is dict:
            if depth >= max_depth:
                return f"{_path(root, path)}: nested deeper than {max_depth}"
            for key, child in item.items():
                if type(key) is not str:
                    return f"{_path(root, path)}: object key {key!r} is not a string"
                push((child, (*path, key), depth + 1))
            continue
        return f"{_path(root, path)}: {_describe(item)} is not a JSON value"
    return None


def free_form_fields(struct_type: type[msgspec.Struct]) -> tuple[str, ...]:
    """The fields of a message type whose values msgspec does not constrain (typed ``Any`` or
    ``dict[str, Any]``): the ones ``value_problem`` must check."""
    names = []
    for field in msgspec.structs.fields(struct_type):
        if field.type is Any or field.type == dict[str, Any]:
            names.append(field.name)
    return tuple(names)


# msgspec.inspect types whose values msgpack encodes whenever JSON does (ints aside: msgpack
# stops at 64 bits, JSON does not). Free-form fields (exactly Any or dict[str, Any]) are
# value_problem's, which refuses integers beyond 64 bits in them; any other container needs a
# trial encode.
_PLAIN_TYPES: Final = (
    msgspec.inspect.FloatType,
    msgspec.inspect.StrType,
    msgspec.inspect.BoolType,
    msgspec.inspect.NoneType,
    msgspec.inspect.EnumType,
    msgspec.inspect.LiteralType,
)


def int_fields(struct_type: type[msgspec.Struct]) -> tuple[str, ...] | None:
    """The typed int fields of a flat message type, which a msgpack encoder refuses beyond 64
    bits; None when it has fields of other kinds (nested structs, lists...), whose values only
    a trial encode can vouch for."""
    names = []
    free = set(free_form_fields(struct_type))
    info = msgspec.inspect.type_info(struct_type)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        if field.name in free:
            continue
        kind = field.type
        kinds = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
        for one in kinds:
            if isinstance(one, msgspec.inspect.IntType):
                names.append(field.name)
            elif not isinstance(one, _PLAIN_TYPES):
                return None
    return tuple(dict.fromkeys(names))


def _path(root: str, parts: tuple[str | int, ...]) -> str:
    text = root
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _describe(item: Any) -> str:
    if isinstance(item, msgspec.msgpack.Ext):
        return f"msgpack extension type {item.code}"
    if isinstance(item, bytes | bytearray | memoryview):
        return "binary data"
    return f"a Python {type(item).__name__}"
