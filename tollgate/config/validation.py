"""Validating a document against the config models, naming the field path of every problem at once.

A record of the config file is a frozen pydantic model (:class:`Doc`) or a
frozen dataclass marked :func:`section`: typed fields with their bounds, and
named checks (:func:`check`) for what spans fields. :func:`validate` runs
pydantic on the whole document first; a valid one (the common case, and the
100,000-tenant case) costs nothing more. When pydantic refuses it, the same
models are walked field by field so that every problem is reported with its
path, like ``tenants.acme.keys[1].id: key id 'a' is already used``, and the
checks still run on records whose other fields failed: a field that failed
holds its default (or None) there, as the file had not set it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, model_validator, with_config
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from tollgate.config.field_docs import attribute_docs
from tollgate.config.values import kind

__all__ = ["CONFIG", "Doc", "Found", "Problems", "check", "join", "section", "substitute_env", "validate"]

T = TypeVar("T")
# What a check yields: (field path relative to the record, "" for the record itself; the reason).
Found = Iterator[tuple[str, str]]


def _describe_fields(schema: dict[str, Any], cls: type) -> None:
    """A record's JSON Schema: each property described by its field's docstring (see tollgate/config/field_docs.py,
    which says why pydantic's own ``use_attribute_docstrings`` is off)."""
    properties = schema.get("properties")
    if not properties:
        return
    docs = attribute_docs(cls)
    for f in _shape(cls):
        prop = properties.get(f.key)
        if prop is not None and f.name in docs and not f.described:  # a Field(description=...) wins, as in pydantic
            prop["description"] = docs[f.name]


CONFIG = ConfigDict(extra="forbid", frozen=True, defer_build=True, json_schema_extra=_describe_fields)
_CHECK_MARK = "__config_check__"
_RECORD_MARK = "__config_record__"


class Problems:
    """Accumulates ``path: reason`` lines so one run reports every error at once, each once.

    A field whose value could not be read (an unset ``${VAR}``) is ``unreadable``: what validation would say about
    the empty value put in its place is a consequence, not a problem of its own, and is not added.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._seen: set[str] = set()
        self.unreadable: set[str] = set()
        self.found = 0  # problems found, those not added (already said, or a consequence) included

    def add(self, path: str, reason: str) -> None:
        self.found += 1
        path = path or "<root>"
        line = f"{path}: {reason}"
        if line in self._seen or path in self.unreadable:
            return
        self._seen.add(line)
        self.lines.append(line)

    def paths_since(self, start: int) -> set[str]:
        """The field paths named by the problems added since ``len(lines)`` was ``start``."""
        return {line.partition(": ")[0] for line in self.lines[start:]}

    def __bool__(self) -> bool:
        return bool(self.lines)


def join(path: str, key: str) -> str:
    """``listeners`` + ``admin`` -> ``listeners.admin``; a key starting with ``[`` is an index."""
    if not path:
        return key
    if not key:
        return path
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


# -- records and their checks ------------------------------------------------------


def check(fn: Callable[[T], Found]) -> Callable[[T], Found]:
    """Mark a method of a record as a named cross-field validator: it yields ``(field path, reason)``."""
    setattr(fn, _CHECK_MARK, True)
    return fn


_CHECKS: dict[type, tuple[Callable[[Any], Found], ...]] = {}


def _checks(cls: type) -> tuple[Callable[[Any], Found], ...]:
    checks = _CHECKS.get(cls)
    if checks is None:
        found: dict[str, Callable[[Any], Found]] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if callable(value) and getattr(value, _CHECK_MARK, False):
                    found[name] = value
        checks = _CHECKS[cls] = tuple(found.values())
    return checks


def _found(record: object) -> Found:
    for fn in _checks(type(record)):
        yield from fn(record)


def _install_checks(cls: type) -> None:
    """Run the named checks of ``cls`` after pydantic validated its fields (only where it declares some)."""
    if _checks(cls):
        setattr(cls, "_checks_hold", model_validator(mode="after")(_refuse_failed_checks))  # noqa: B010


def _drop_nulls(data: Any) -> Any:
    """``key: null`` in a record means the key is not set (an empty ``store:`` section, ``expires: null``)."""
    if isinstance(data, dict) and None in data.values():
        return {k: v for k, v in data.items() if v is not None}
    return data


def _unset_nulls(cls: type, data: Any) -> Any:
    """``data`` without the null keys of every record in it (the rare file that has some takes this detour)."""
    data = _drop_nulls(data)
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for f in _shape(cls):
        value = out.get(f.key)
        if f.record is None or value is None:
            continue
        if f.shape == "one":
            out[f.key] = _unset_nulls(f.record, value)
        elif f.shape == "map" and isinstance(value, dict):
            out[f.key] = {k: _unset_nulls(f.record, {} if v is None else v) for k, v in value.items()}
        elif f.shape == "seq" and isinstance(value, list):
            out[f.key] = [_unset_nulls(f.record, {} if v is None else v) for v in value]
    return out


def _refuse_failed_checks(record: Any) -> Any:
    for _problem in _found(record):
        raise PydanticCustomError("config_check", "a check failed")  # the walk names it
    return record


class Doc(BaseModel):
    """A record as the file (or an admin API body) writes it: unknown keys refused, frozen once validated."""

    model_config = CONFIG
    __config_record__: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _install_checks(cls)


def section(cls: type[T]) -> type[T]:
    """Make a frozen dataclass a record of the file: validated by pydantic, unknown keys refused, checks run."""
    _install_checks(cls)
    setattr(cls, _RECORD_MARK, True)
    return with_config(CONFIG)(cls)


def _is_record(tp: object) -> bool:
    return isinstance(tp, type) and bool(getattr(tp, _RECORD_MARK, False))


# -- the shape of a record, for the walk --------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    key: str
    required: bool
    default: Callable[[], Any]
    annotation: Any
    shape: str  # "leaf" | "one" | "map" | "seq"
    record: type | None = None
    key_type: Any = None
    described: bool = False  # a description given with the field (Field(description=...)), not a docstring

    @property
    def leaf(self) -> TypeAdapter[Any]:
        return _adapter(self.annotation)

    @property
    def keys(self) -> TypeAdapter[Any]:
        return _adapter(self.key_type)


def _strip(tp: Any) -> Any:
    """The type inside ``Annotated`` and ``X | None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _classify(annotation: Any) -> tuple[str, type | None, Any]:
    """How the walk treats a field: a ``leaf`` pydantic validates, or ``one`` record, a ``map`` or ``seq`` of them."""
    tp = _strip(annotation)
    if _is_record(tp):
        return "one", tp, None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (dict, Mapping, typing.Mapping) and len(args) == 2:
        value = _strip(args[1])
        if _is_record(value):
            return "map", value, args[0]
    if origin in (tuple, list) and args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)):
        item = _strip(args[0])
        if _is_record(item):
            return "seq", item, None
    return "leaf", None, None


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(tp)
    if adapter is None:
        adapter = _ADAPTERS[tp] = TypeAdapter(tp)
    return adapter


_SHAPES: dict[type, tuple[_Field, ...]] = {}


def _shape(cls: type) -> tuple[_Field, ...]:
    shape = _SHAPES.get(cls)
    if shape is None:
        shape = _SHAPES[cls] = _shape_of(cls)
    return shape


def _shape_of(cls: type) -> tuple[_Field, ...]:
    infos: list[tuple[str, FieldInfo, Callable[[], Any]]] = []
    if issubclass(cls, BaseModel):
        for name, info in cls.model_fields.items():
            infos.append((name, info, _default_of(info)))
    else:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(typing.cast(Any, cls)):
            info = FieldInfo.from_annotated_attribute(hints[f.name], PydanticUndefined)
            if f.default is not dataclasses.MISSING:
                default: Callable[[], Any] = _constant(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory
            else:
                default = _none
            infos.append((f.name, info, default))
    out = []
    for name, info, default in infos:
        annotation = info.rebuild_annotation()
        shape, record, key_type = _classify(annotation)
        required = info.is_required() if issubclass(cls, BaseModel) else default is _none
        described = info.description is not None
        out.append(_Field(name, info.alias or name, required, default, annotation, shape, record, key_type, described))
    return tuple(out)


def _none() -> None:
    return None


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _default_of(info: FieldInfo) -> Callable[[], Any]:
    if info.is_required():
        return _none
    return lambda: info.get_default(call_default_factory=True)


def _construct(cls: type[T], values: dict[str, Any], given: set[str]) -> T:
    if issubclass(cls, BaseModel):
        return cls.model_construct(_fields_set=given, **values)
    return cls(**values)


# -- problems from pydantic's errors --------------------------------------------------

_KIND_ERRORS = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dataclass_type": "must be a mapping",
    "dataclass_exact_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "frozen_set_type": "must be a list",
}


_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _unanchored(pattern: str) -> str:
    if pattern.startswith("^(?:") and pattern.endswith(")$"):
        return pattern[4:-2]
    return pattern


def _message(error: Mapping[str, Any]) -> str:
    kind_of, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind_of == "missing":
        return "is required"
    if kind_of in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key"
    if kind_of in _KIND_ERRORS:
        return f"{_KIND_ERRORS[kind_of]}, not {kind(value)}"
    if kind_of == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx['min_length']} characters"
    if kind_of == "string_pattern_mismatch":
        return f"{value!r} does not match {_unanchored(str(ctx['pattern']))}"
    if kind_of in _BOUNDS:
        op, bound = _BOUNDS[kind_of]
        return f"must be {op} {ctx[bound]} (got {value})"
    if kind_of == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"must be one of {', '.join(choices)} (got {value!r})"
    if kind_of in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return str(error["msg"])


def _report(exc: ValidationError, path: str, problems: Problems) -> None:
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if loc and loc[-1] == "[key]":  # a mapping's key: the name of a section
            problems.add(_path(path, loc[:-1]), _invalid_name(error))
            continue
        if error["type"] == "config_at":  # a problem inside a free-form mapping, at one of its keys
            loc.append(str((error.get("ctx") or {})["key"]))
        problems.add(_path(path, loc), _message(error))


def _invalid_name(error: Mapping[str, Any]) -> str:
    pattern = (error.get("ctx") or {}).get("pattern")
    return "invalid name" + (f" (must match {_unanchored(str(pattern))})" if pattern else "")


def _path(path: str, loc: Iterable[int | str]) -> str:
    for part in loc:
        path = join(path, f"[{part}]" if isinstance(part, int) else str(part))
    return path


# -- the walk ---------------------------------------------------------------------------


def validate(cls: type[T], data: Any, path: str, problems: Problems) -> T | None:
    """``data`` as a ``cls``, every problem added to ``problems``; None when ``data`` is no mapping at all.

    The result may be a partial record (see the module docstring) when problems were found: use it only to
    look for more problems, never as configuration.
    """
    adapter = _adapter(cls)
    try:
        return typing.cast(T, adapter.validate_python(data))
    except ValidationError as exc:
        first = exc
    unset = _unset_nulls(cls, data)
    if unset != data:
        try:
            return typing.cast(T, adapter.validate_python(unset))
        except ValidationError as exc:
            first = exc
    before = problems.found
    record = _walk(cls, unset, path, problems)
    if problems.found == before:  # the walk found nothing pydantic did: say what pydantic said
        _report(first, path, problems)
    return record


def _walk(cls: type[T], data: Any, path: str, problems: Problems) -> T | None:
    if not isinstance(data, dict):
        problems.add(path, f"must be a mapping, not {kind(data)}")
        return None
    data = _drop_nulls(data)
    fields = _shape(cls)
    start = len(problems.lines)
    values: dict[str, Any] = {}
    given: set[str] = set()
    for f in fields:
        at = join(path, f.key)
        if f.key not in data:
            if f.required:
                problems.add(at, "is required")
            values[f.name] = f.default()
            continue
        given.add(f.name)
        values[f.name] = _field(f, data[f.key], at, problems)
    known = {f.key for f in fields}
    for key in data:
        if key not in known:
            problems.add(join(path, str(key)), "unknown key")
    record = _construct(cls, values, given)
    failed = problems.paths_since(start)  # a field that failed holds its default: what a check says of it is moot
    try:
        for where, reason in _found(record):
            at = join(path, where)
            if at not in failed:
                problems.add(at, reason)
    except (AttributeError, TypeError, KeyError, ValueError):
        pass  # a check that needs a field that failed: that field's problem is reported already
    return record


def _field(f: _Field, value: Any, at: str, problems: Problems) -> Any:
    record = f.record
    if record is None:
        try:
            return f.leaf.validate_python(value)
        except ValidationError as exc:
            _report(exc, at, problems)
            return f.default()
    if f.shape == "one":
        one = validate(record, value, at, problems)
        return f.default() if one is None else one
    if f.shape == "map":
        if not isinstance(value, dict):
            problems.add(at, f"must be a mapping of names to sections, not {kind(value)}")
            return f.default()
        out: dict[Any, Any] = {}
        for name, item in value.items():
            try:
                key = f.keys.validate_python(name)
            except ValidationError as exc:  # its section is still read: its own problems are reported too
                problems.add(join(at, str(name)), _invalid_name(exc.errors(include_url=False)[0]))
                key = name
            entry: Any = validate(record, item, join(at, str(name)), problems)
            if entry is not None:
                out[key] = entry
        return out
    if not isinstance(value, list):
        problems.add(at, f"must be a list, not {kind(value)}")
        return f.default()
    items = (validate(record, item, join(at, f"[{i}]"), problems) for i, item in enumerate(value))
    return tuple(item for item in items if item is not None)


# -- ${VAR} ------------------------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(doc: Any, env: Mapping[str, str], problems: Problems, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``doc``.

    Done after YAML parsing, on values only, so a secret can never change the
    document's structure. An unset variable without a default is a problem
    naming the field that asked for it.
    """
    if isinstance(doc, dict):
        return {k: substitute_env(v, env, problems, f"{path}.{k}" if path else str(k)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [substitute_env(v, env, problems, f"{path}[{i}]") for i, v in enumerate(doc)]
    if isinstance(doc, str) and "${" in doc:

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.add(path, f"environment variable {name} is not set")
            problems.unreadable.add(path or "<root>")
            return ""

        return _ENV.sub(repl, doc)
    return doc
