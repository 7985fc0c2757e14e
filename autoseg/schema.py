"""Typed, versioned JSON artefacts: what every stage hands on, checked field by field on load.

Each JSON file autoseg writes for a later stage (or a person) loads into a frozen dataclass that
subclasses :class:`Artefact`. Loading checks the file's version and every field against its type
annotation, so a hand-edited file either works or fails with an :class:`~autoseg.errors.AutosegError`
naming the file, the dotted field (``recipe.schedule``, ``cases[3].spacing[0]``), the bad value and the
fix. Closed sets are ``typing.Literal``: a value outside one is refused with the allowed values, never
taken for a default. :meth:`Artefact.save` writes atomically, and only what would load again.

Types understood: ``bool``, ``int``, ``float`` (finite; :data:`MaybeNan` allows NaN), ``str``,
``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[K, V]`` (JSON
object keys become ``int`` where ``K`` is ``int``) and nested dataclasses. Field helpers:
:func:`optional` (written only when set) and :func:`rest` (an object's remaining keys, for objects
keyed by data such as a class name). Where a file is (its name) is :mod:`autoseg.layout`'s business.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Note(Artefact):
    ...     KIND, VERSION_KEY, VERSION, FIX = "note", "note_version", 1, "write the note again"
    ...     text: str
    ...     mood: Literal["good", "bad"] = "good"
    >>> Note.from_dict({"text": "hi"}).to_dict()
    {'note_version': 1, 'text': 'hi', 'mood': 'good'}
    >>> Note.from_dict({"text": "hi", "mood": "meh"}, "note.json")
    Traceback (most recent call last):
    autoseg.errors.AutosegError: note.json: mood 'meh' is not one of good, bad
    Fix: correct the field or write the note again

The artefacts other than the plans (:mod:`autoseg.plans`) live in :mod:`autoseg.artefacts`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from autoseg.errors import AutosegError
from autoseg.io import write_json

__all__ = ["Artefact", "MaybeNan", "FieldError", "optional", "rest", "build", "to_json", "literal_problems"]

A = TypeVar("A", bound="Artefact")

#: A float that may be NaN (a score of nothing, e.g. the Dice of a class absent from every case).
MaybeNan = Annotated[float, "nan allowed"]


class FieldError(Exception):
    """A value that does not fit its field; the message starts with the dotted field name."""


def optional(default: Any = None) -> Any:
    """A field written to JSON only when it is not None (the key is absent otherwise)."""
    return field(default=default, metadata={"omit_none": True})


def rest() -> Any:
    """A ``dict`` field holding the object's keys that are not other fields, written back flat."""
    return field(default_factory=dict, metadata={"rest": True})


class Artefact:
    """Base of versioned JSON artefacts (subclasses are frozen dataclasses).

    ``KIND``: what the file is, for messages. ``VERSION_KEY`` / ``VERSION``: the key holding the
    format version and the version this autoseg reads and writes. ``UNVERSIONED``: the version of a
    file without the key (the format autoseg wrote before the artefact carried one), or None when the
    key is required. ``ERROR``: the error class a user sees. ``FIX``: how to make the file again;
    ``MISSING_FIX``: what to do when it does not exist.

    ``artefact[key]`` and ``artefact.get(key)`` read the value as written in the JSON file, for
    callers written against the dict the file used to be; new code reads the typed attributes.
    """

    KIND: ClassVar[str] = "artefact"
    VERSION_KEY: ClassVar[str] = "version"
    VERSION: ClassVar[int] = 1
    UNVERSIONED: ClassVar[int | None] = 1
    ERROR: ClassVar[type[AutosegError]] = AutosegError
    FIX: ClassVar[str] = "write the file again"
    MISSING_FIX: ClassVar[str | None] = None

    # --- writing -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the version key first (unless it is a field), then the fields in order."""
        data: dict[str, Any] = to_json(self)
        if self.VERSION_KEY in data:
            return data
        return {self.VERSION_KEY: self.VERSION, **data}

    def save(self, path: str | Path) -> None:
        """Write atomically, after checking that the file will load again."""
        data = self.to_dict()
        type(self).from_dict(json.loads(json.dumps(data, default=_plain)), path)
        write_json(path, data)

    # --- reading -----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls: type[A], data: Any, source: str | Path | None = None) -> A:
        """Check the version and every field of ``data`` (read from ``source``, for messages)."""
        if not isinstance(data, dict):
            raise cls.ERROR(f"a {cls.KIND} file must hold a JSON object, not {type(data).__name__}", source,
                            cls.FIX)
        cls.check_version(data, source)
        own = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        body = data if cls.VERSION_KEY in own else {k: v for k, v in data.items() if k != cls.VERSION_KEY}
        try:
            built: A = build(cls, body, "")
            return built
        except FieldError as exc:
            raise cls.ERROR(str(exc), source, f"correct the field or {cls.FIX}") from None
        except AutosegError as exc:  # a check of the type itself (__post_init__)
            raise cls.ERROR(str(exc).split("\nFix:")[0], source, f"correct the field or {cls.FIX}") from None

    @classmethod
    def check_version(cls, data: dict[str, Any], source: str | Path | None) -> None:
        version = data.get(cls.VERSION_KEY, cls.UNVERSIONED)
        if version == cls.VERSION and type(version) is int:
            return
        reads = f"this autoseg reads version {cls.VERSION}"
        if version is None:
            raise cls.ERROR(f"{cls.VERSION_KEY} is missing; {reads}", source, cls.FIX)
        if isinstance(version, int) and not isinstance(version, bool) and version > cls.VERSION:
            raise cls.ERROR(f"{cls.VERSION_KEY} is {version} (written by a newer autoseg); {reads}", source,
                            f"use the autoseg that wrote it, or {cls.FIX}")
        raise cls.ERROR(f"{cls.VERSION_KEY} is {version!r}; {reads}", source, cls.FIX)

    @classmethod
    def load(cls: type[A], path: str | Path) -> A:
        """Read and check ``path``; a missing, unreadable or invalid file is ``cls.ERROR`` naming it."""
        path = Path(path)
        if not path.is_file():
            raise cls.ERROR(f"{cls.KIND} file not found", path, cls.MISSING_FIX or cls.FIX)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise cls.ERROR(f"cannot read the {cls.KIND} file ({exc})", path, cls.FIX) from None
        except json.JSONDecodeError as exc:
            raise cls.ERROR(f"not valid JSON ({exc})", path, f"repair the file or {cls.FIX}") from None
        return cls.from_dict(data, path)

    # --- the JSON view -----------------------------------------------------------------------------
    @functools.cached_property
    def _json_view(self) -> dict[str, Any]:
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._json_view[key]

    def __contains__(self, key: object) -> bool:
        return key in self._json_view

    def get(self, key: str, default: Any = None) -> Any:
        return self._json_view.get(key, default)


def to_json(value: Any) -> Any:
    """Dataclasses as objects (fields in order), tuples as lists, int dict keys as sorted strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("rest"):
                out.update((str(k), to_json(v)) for k, v in item.items())
            elif not (item is None and f.metadata.get("omit_none")):
                out[f.name] = to_json(item)
        return out
    if isinstance(value, dict):
        items = value.items()
        if value and all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            items = sorted(items)  # type: ignore[assignment]
        return {str(k): to_json(v) for k, v in items}
    if isinstance(value, (list, tuple)):
        if all(type(v) in _SCALARS for v in value):
            return list(value)
        return [to_json(v) for v in value]
    return value


_SCALARS = (int, float, str, bool, type(None))


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays (as :func:`autoseg.io.write_json` writes them)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _name(where: str) -> str:
    return f"'{where}'" if where else "the file"


def build(tp: Any, value: Any, where: str) -> Any:
    """Convert JSON ``value`` to type ``tp``; a mismatch is a :class:`FieldError` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where)  # type: ignore[arg-type]
    if origin is Annotated:
        inner = args[0]
        if inner is float and "nan allowed" in tp.__metadata__ and _is_number(value) and math.isnan(float(value)):
            return float(value)
        return build(inner, value, where)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise FieldError(f"{where} {value!r} is not one of {', '.join(str(a) for a in args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for alternative in (a for a in args if a is not type(None)):
            try:
                return build(alternative, value, where)
            except FieldError as exc:
                errors.append(exc)
        raise errors[0]
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise FieldError(f"{_name(where)} must be a list, got {value!r}")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            fast = _fast_tuples(item, value)
            out = fast if fast is not None else tuple(build(item, v, f"{where}[{i}]") for i, v in enumerate(value))
            return list(out) if origin is list else out
        if len(args) != len(value):
            raise FieldError(f"{_name(where)} must have {len(args)} entries, got {len(value)}")
        return tuple(build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise FieldError(f"{_name(where)} must be an object, got {value!r}")
        kt, vt = args
        out_dict = {}
        for k, v in value.items():
            try:
                key = build(kt, k, where)
            except FieldError:
                raise FieldError(f"{_name(where)} has a key of the wrong type: {k!r}") from None
            out_dict[key] = v if vt is Any else build(vt, v, f"{where}.{k}".lstrip("."))
        return out_dict
    return _build_scalar(tp, value, where)


def _fast_tuples(item: Any, value: list[Any] | tuple[Any, ...]) -> tuple[Any, ...] | None:
    """``value`` as a tuple when it plainly fits ``item`` (exact ints, or lists of exact ints for
    ``tuple[int, int, int]``): a case's 30,000 sampled voxel coordinates load in milliseconds."""
    if item is int and all(type(v) is int for v in value):
        return tuple(value)
    shape = typing.get_args(item) if typing.get_origin(item) is tuple else ()
    if shape and Ellipsis not in shape and all(a is int for a in shape):
        n = len(shape)
        if all(type(v) is list and len(v) == n and all(type(x) is int for x in v) for v in value):
            return tuple(tuple(v) for v in value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _build_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise FieldError(f"{_name(where)} must be null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise FieldError(f"{_name(where)} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if not (_is_number(value) or isinstance(value, str)):
            raise FieldError(f"{_name(where)} must be a number, got {value!r}")
        try:
            number = tp(value)
        except (ValueError, OverflowError):
            raise FieldError(f"{_name(where)} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise FieldError(f"{_name(where)} must be a finite number, got {value!r}")
        if tp is int and float(value) != number:
            raise FieldError(f"{_name(where)} must be a whole number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise FieldError(f"{_name(where)} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported type {tp} at {where}")


def _build_dataclass(tp: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise FieldError(f"{_name(where)} must be an object, got {value!r}")
    hints = _hints(tp)
    fields = dataclasses.fields(tp)
    spill = next((f for f in fields if f.metadata.get("rest")), None)
    named = {f.name for f in fields if f is not spill}
    unknown = [k for k in value if k not in named]
    if unknown and spill is None:
        raise FieldError(f"unknown field(s) {sorted(unknown)} in {_name(where)}")
    kwargs = {}
    for f in fields:
        at = f"{where}.{f.name}".lstrip(".")
        if f is spill:
            kwargs[f.name] = build(hints[f.name], {k: value[k] for k in unknown}, where)
        elif f.name in value:
            kwargs[f.name] = build(hints[f.name], value[f.name], at)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise FieldError(f"missing field '{at}'")
    try:
        return tp(**kwargs)
    except TypeError as exc:
        raise FieldError(f"{_name(where)}: {exc}") from None


def literal_problems(obj: Any, where: str = "") -> list[str]:
    """Literal-typed fields of a dataclass (and the dataclasses inside it) holding a value outside
    their set, as messages; for objects built in code, which :func:`build` did not check."""
    out: list[str] = []
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return out
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value, at, tp = getattr(obj, f.name), f"{where}.{f.name}".lstrip("."), hints[f.name]
        if typing.get_origin(tp) is Literal:
            try:
                build(tp, value, at)
            except FieldError as exc:
                out.append(str(exc))
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                out += literal_problems(item, f"{at}[{i}]")
        else:
            out += literal_problems(value, at)
    return out
