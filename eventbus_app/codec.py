"""Type-directed JSON codec for event payloads.

Values are encoded by the field's annotation, so decoding gives back the same Python types:
aware ``datetime``, ``date``, ``time``, ``Decimal``, ``UUID``, ``Enum``, nested dataclasses,
``list``, ``tuple``, ``frozenset``, ``dict``, ``Optional`` and unions of JSON scalars, and
``Any`` (plain JSON values). Everything that JSON, or PostgreSQL's ``jsonb``, cannot hold
exactly is rejected with :class:`CodecError` naming the path to the bad value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import re
import sys
import types
import typing
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_DEPTH = 64
# jsonb cannot hold NUL, and no JSON encoder can hold a lone surrogate.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SCALARS = (str, int, float, bool, type(None))


class CodecError(ValueError):
    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


_field_types: dict[type, dict[str, Any]] = {}

# Bare containers, as users write them (``meta: dict``): their JSON form is unambiguous.
# Bare ``frozenset`` and ``set`` are not here: JSON arrays and objects are not hashable.
_BARE: dict[Any, Any] = {dict: dict[str, Any], list: list[Any], tuple: tuple[Any, ...]}


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields, bare containers expanded (cached per
    class)."""
    cached = _field_types.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls)
        cached = _field_types[cls] = {
            f.name: expand_bare(hints[f.name]) for f in dataclasses.fields(cls)
        }
    return cached


def expand_bare(tp: Any) -> Any:
    """``dict`` → ``dict[str, Any]``, ``list`` → ``list[Any]``, ``tuple`` →
    ``tuple[Any, ...]`` (also ``typing.Dict`` and friends), at any depth of ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not args:
        bare = origin if origin in _BARE else tp
        return _BARE[bare] if isinstance(bare, type) and bare in _BARE else tp
    expanded = tuple(a if a is Ellipsis else expand_bare(a) for a in args)
    if expanded == args:
        return tp
    if _is_union(tp):
        return typing.Union[expanded]  # noqa: UP007 (a runtime union of computed members)
    if origin in (list, tuple, frozenset, set, dict):
        return origin[expanded]
    return tp


def _check_str(value: str, path: str) -> str:
    bad = _UNSTORABLE.search(value)
    if bad:
        char = bad.group()
        what = "a NUL character" if char == "\x00" else f"a lone surrogate {char!r}"
        raise CodecError(path, f"contains {what} at index {bad.start()}, which JSON cannot store")
    return value


def _check_int(value: int, path: str) -> int:
    """Python refuses to turn ints of more than ``sys.get_int_max_str_digits()`` digits into
    text (and back): such an int could be neither stored nor read by a worker."""
    limit = sys.get_int_max_str_digits()
    if limit and value.bit_length() * 0.30103 + 1 > limit:
        try:
            str(value)
        except ValueError:
            raise CodecError(
                path,
                f"is an int of more than {limit} digits, which JSON cannot carry between "
                "Python processes (sys.get_int_max_str_digits()); store it as a str",
            ) from None
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _wrong(path: str, value: Any, tp: Any) -> CodecError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return CodecError(path, f"expected {_type_name(tp)}, got {type(value).__name__} {shown}")


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def check_annotation(tp: Any, path: str) -> None:
    """Reject, when a class is declared, annotations the codec cannot round-trip."""
    if tp is Any or tp in _SCALARS or tp in (Decimal, uuid.UUID, dt.datetime, dt.date, dt.time):
        return
    if isinstance(tp, type) and (issubclass(tp, enum.Enum) or dataclasses.is_dataclass(tp)):
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        members = [a for a in args if a is not type(None)]
        if len(members) > 1 and not all(m in _SCALARS for m in members):
            raise CodecError(
                path,
                f"union {tp!r} is ambiguous once stored as JSON; use Optional[X] or a union of "
                "str/int/float/bool",
            )
        for member in members:
            check_annotation(member, path)
        return
    if tp is set or origin is set:
        raise CodecError(
            path, f"{tp!r} is mutable; use frozenset[str] (with its item type) in a frozen event"
        )
    if tp is frozenset or (origin is frozenset and not args):
        raise CodecError(path, "frozenset needs its item type, e.g. frozenset[str]")
    if origin in (list, tuple, frozenset, dict):
        if (
            origin is dict
            and args[0] not in (str, int, uuid.UUID)
            and not (isinstance(args[0], type) and issubclass(args[0], enum.Enum))
        ):
            raise CodecError(
                path,
                f"dict keys must be str, int, UUID or Enum, not {args[0]!r}; "
                f"use dict[str, {_type_name(args[1])}]",
            )
        for arg in args:
            if arg is not Ellipsis:
                check_annotation(arg, path)
        return
    raise CodecError(
        path,
        f"annotation {tp!r} is not supported in events; use a type that round-trips through "
        "JSON (str, int, float, bool, datetime, date, time, Decimal, UUID, an Enum, a "
        "dataclass, list/tuple/frozenset/dict of those) or Any for plain JSON values",
    )


def encode(value: Any, tp: Any, path: str, depth: int = 0) -> Any:
    """Validate ``value`` against ``tp`` and return its JSON form."""
    if depth > MAX_DEPTH:
        raise CodecError(path, f"is nested deeper than {MAX_DEPTH} levels")
    if tp is Any:
        return _encode_any(value, path, depth)
    if _is_union(tp):
        if value is None and type(None) in typing.get_args(tp):
            return None
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:  # Optional[X]: X's own error is the helpful one
            return encode(value, members[0], path, depth)
        for member in members:
            try:
                return encode(value, member, path, depth)
            except CodecError:
                continue
        raise _wrong(path, value, tp)
    if tp is type(None):
        if value is not None:
            raise _wrong(path, value, tp)
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise _wrong(path, value, tp)
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _wrong(path, value, tp)
        return _check_int(int(value), path)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(path, value, tp)
        if isinstance(value, int):  # an int where a float is declared must fit exactly
            if not -(2**53) <= value <= 2**53 and (
                value.bit_length() > 1024 or int(float(value)) != value
            ):
                raise CodecError(
                    path,
                    f"is the int {value!r:.40}, which a float cannot hold exactly; "
                    "annotate the field as int",
                )
            return float(value)
        if not math.isfinite(value):
            raise CodecError(path, f"is {value!r}; JSON has no NaN or infinity")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _wrong(path, value, tp)
        return _check_str(value, path)
    if tp is Decimal:
        if not isinstance(value, Decimal):
            raise _wrong(path, value, tp)
        if not value.is_finite():
            raise CodecError(path, f"is Decimal({str(value)!r}); only finite decimals are stored")
        return str(value)
    if tp is uuid.UUID:
        if not isinstance(value, uuid.UUID):
            raise _wrong(path, value, tp)
        return str(value)
    if tp is dt.datetime:
        if not isinstance(value, dt.datetime):
            raise _wrong(path, value, tp)
        if value.utcoffset() is None:
            raise CodecError(
                path,
                f"is a naive datetime {value.isoformat()!r}; use an aware one "
                "(django.utils.timezone.now())",
            )
        return value.isoformat()
    if tp is dt.date:
        if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
            raise _wrong(path, value, tp)
        return value.isoformat()
    if tp is dt.time:
        if not isinstance(value, dt.time):
            raise _wrong(path, value, tp)
        return value.isoformat()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if not isinstance(value, tp):
            raise _wrong(path, value, tp)
        return _encode_any(value.value, f"{path}.value", depth + 1)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, tp):
            raise _wrong(path, value, tp)
        return encode_fields(value, path, depth + 1)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        if not isinstance(value, list):
            raise _wrong(path, value, tp)
        return [encode(v, args[0], f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if origin is frozenset:
        if not isinstance(value, frozenset | set):
            raise _wrong(path, value, tp)
        return [encode(v, args[0], f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, tuple):
            raise _wrong(path, value, tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return [encode(v, args[0], f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if len(value) != len(args):
            raise CodecError(path, f"expected a tuple of {len(args)} items, got {len(value)}")
        return [
            encode(v, a, f"{path}[{i}]", depth + 1)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        ]
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(path, value, tp)
        key_tp, value_tp = args
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _encode_key(k, key_tp, path)
            out[key] = encode(v, value_tp, f"{path}[{key!r}]", depth + 1)
        return out
    raise CodecError(path, f"annotation {tp!r} is not supported in events")


def _encode_key(key: Any, tp: Any, path: str) -> str:
    if tp is str:
        if not isinstance(key, str):
            raise CodecError(path, f"has key {key!r}; keys must be str")
        return _check_str(key, f"{path} key")
    if tp is int:
        if not isinstance(key, int) or isinstance(key, bool):
            raise CodecError(path, f"has key {key!r}; keys must be int")
        return str(key)
    if tp is uuid.UUID:
        if not isinstance(key, uuid.UUID):
            raise CodecError(path, f"has key {key!r}; keys must be UUID")
        return str(key)
    if not isinstance(key, tp):
        raise CodecError(path, f"has key {key!r}; keys must be {tp.__name__}")
    return _check_str(str(key.value), f"{path} key")


def _encode_any(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError(path, f"is nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _check_int(value, path)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CodecError(path, f"is {value!r}; JSON has no NaN or infinity")
        return value
    if isinstance(value, str):
        return _check_str(value, path)
    if isinstance(value, list | tuple):
        return [_encode_any(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CodecError(path, f"has key {k!r}; JSON object keys must be str")
            out[_check_str(k, f"{path} key")] = _encode_any(v, f"{path}[{k!r}]", depth + 1)
        return out
    raise CodecError(
        path,
        f"holds {type(value).__name__} {value!r:.60}, which is not a JSON value; "
        "annotate the field with its type",
    )


def encode_fields(obj: Any, path: str = "", depth: int = 0) -> dict[str, Any]:
    prefix = f"{path}." if path else ""
    return {
        name: encode(getattr(obj, name), tp, prefix + name, depth)
        for name, tp in field_types(type(obj)).items()
    }


def decode(value: Any, tp: Any, path: str) -> Any:
    """Turn the JSON form back into the annotated Python type."""
    if tp is Any:
        return value
    if _is_union(tp):
        if value is None and type(None) in typing.get_args(tp):
            return None
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return decode(value, members[0], path)
        for member in members:  # unions of scalars: pick by JSON type
            if type(value) is member:
                return value
        if float in members and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise _wrong(path, value, tp)
    try:
        if tp is type(None):
            if value is not None:
                raise _wrong(path, value, tp)
            return None
        if tp is bool:
            if not isinstance(value, bool):
                raise _wrong(path, value, tp)
            return value
        if tp is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise _wrong(path, value, tp)
            return value
        if tp is float:
            # jsonb prints integral floats without a fraction: 1e16 comes back as int.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _wrong(path, value, tp)
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise _wrong(path, value, tp)
            return value
        if tp is Decimal:
            return Decimal(_need_str(value, path, tp))
        if tp is uuid.UUID:
            return uuid.UUID(_need_str(value, path, tp))
        if tp is dt.datetime:
            return dt.datetime.fromisoformat(_need_str(value, path, tp))
        if tp is dt.date:
            return dt.date.fromisoformat(_need_str(value, path, tp))
        if tp is dt.time:
            return dt.time.fromisoformat(_need_str(value, path, tp))
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return tp(value)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise _wrong(path, value, tp)
            return decode_fields(tp, value, path)
    except (ValueError, InvalidOperation, TypeError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(path, f"cannot be read as {_type_name(tp)}: {exc}") from exc
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple, frozenset):
        if not isinstance(value, list):
            raise _wrong(path, value, tp)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise CodecError(path, f"expected {len(args)} items, got {len(value)}")
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(decode(v, a, f"{path}[{i}]") for i, (v, a) in pairs)
        items = [decode(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(path, value, tp)
        key_tp, value_tp = args
        return {
            _decode_key(k, key_tp, path): decode(v, value_tp, f"{path}[{k!r}]")
            for k, v in value.items()
        }
    raise CodecError(path, f"annotation {tp!r} is not supported in events")


def _need_str(value: Any, path: str, tp: Any) -> str:
    if not isinstance(value, str):
        raise _wrong(path, value, tp)
    return value


def _decode_key(key: str, tp: Any, path: str) -> Any:
    try:
        if tp is str:
            return key
        if tp is int:
            return int(key)
        if tp is uuid.UUID:
            return uuid.UUID(key)
        member_type = type(next(iter(tp)).value) if len(tp) else str
        return tp(member_type(key))
    except (ValueError, TypeError) as exc:
        raise CodecError(path, f"key {key!r} cannot be read as {_type_name(tp)}") from exc


def decode_fields(cls: type, data: dict[str, Any], path: str = "") -> Any:
    hints = field_types(cls)
    prefix = f"{path}." if path else ""
    unknown = set(data) - set(hints)
    if unknown:
        raise CodecError(
            path or cls.__name__, f"has fields {sorted(unknown)} not in {cls.__name__}"
        )
    kwargs = {
        name: decode(data[name], tp, prefix + name) for name, tp in hints.items() if name in data
    }
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise CodecError(path or cls.__name__, str(exc)) from exc
