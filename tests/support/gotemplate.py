"""Go's text/template, the part of it (and of Helm's functions) that deploy/helm/tollgate uses, so tests render the
chart without helm.

Supported: actions with trim markers (``{{-`` / ``-}}``), comments, fields (``.Values.a.b``, ``$.Release.Name``,
``$var.field``), variables (``$x := ...``, ``$x = ...``, ``range $k, $v := ...``), pipes, parentheses, string,
number and bool literals; ``if``/``else if``/``else``, ``with``/``else``, ``range``/``else``, ``define``; the
functions in :data:`FUNCTIONS`. Anything else is a :class:`TemplateError`, never a silent difference.

Values follow Helm's types: numbers read from values files are float64 in Helm, so :func:`helm_values` turns ints
into floats and :func:`show` prints floats as Go's ``%v`` does (``8080``, ``1e+06``); a comparison of an int with a
float fails as it does in Go. Helm's non-strict mode is followed for missing keys: a missing map key is nil, a field
of nil is an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .helmfuncs import FUNCTIONS, TemplateError, go_yaml, helm_values, show, truthy

__all__ = ["FUNCTIONS", "Template", "TemplateError", "go_yaml", "helm_values", "show", "truthy"]


# ---------------------------------------------------------------------------------------------------------------
# Parsing


_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])
    | (?P<decl>:=)
    | (?P<assign>=)
    | (?P<punct>[()|,])
    | (?P<var>\$[A-Za-z0-9_]*)(?P<varfields>(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class Field:
    """``.a.b`` (on dot) or ``$v.a.b`` (on a variable)."""

    var: str | None
    path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Pipeline:
    commands: tuple[tuple[Any, ...], ...]
    declare: tuple[str, ...] = ()
    assign: bool = False


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Output:
    pipe: Pipeline


@dataclass(slots=True)
class Block:
    kind: str  # if, with, range
    pipe: Pipeline
    body: list[Any] = field(default_factory=list)
    orelse: list[Any] = field(default_factory=list)


def _tokens(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    src = src.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None or m.end() == pos:
            raise TemplateError(f"cannot read {src[pos:]!r} in {{{{ {src} }}}}")
        kind = m.lastgroup
        assert kind is not None
        if kind == "varfields":
            kind = "var"
        text = m.group("var") + (m.group("varfields") or "") if kind == "var" else m.group(kind)
        out.append((kind, text))
        pos = m.end()
    return out


class _PipeParser:
    def __init__(self, tokens: list[tuple[str, str]], src: str) -> None:
        self.tokens = tokens
        self.i = 0
        self.src = src

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise TemplateError(f"unexpected end of {{{{ {self.src} }}}}")
        self.i += 1
        return tok

    def pipeline(self, allow_declare: bool = True) -> Pipeline:
        declare: list[str] = []
        assign = False
        if allow_declare:
            j = self.i
            names: list[str] = []
            while j < len(self.tokens) and self.tokens[j][0] == "var" and "." not in self.tokens[j][1]:
                names.append(self.tokens[j][1])
                j += 1
                if j < len(self.tokens) and self.tokens[j] == ("punct", ","):
                    j += 1
                    continue
                break
            if names and j < len(self.tokens) and self.tokens[j][0] in ("decl", "assign"):
                declare, assign = names, self.tokens[j][0] == "assign"
                self.i = j + 1
        commands = [self.command()]
        while self.peek() == ("punct", "|"):
            self.take()
            commands.append(self.command())
        return Pipeline(tuple(commands), tuple(declare), assign)

    def command(self) -> tuple[Any, ...]:
        operands: list[Any] = []
        while (tok := self.peek()) is not None and tok not in (("punct", "|"), ("punct", ")")):
            operands.append(self.operand())
        if not operands:
            raise TemplateError(f"empty command in {{{{ {self.src} }}}}")
        return tuple(operands)

    def operand(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return Literal(json.loads(text))
        if kind == "raw":
            return Literal(text[1:-1])
        if kind == "num":
            return Literal(float(text) if any(c in text for c in ".eE") else int(text))
        if kind == "field":
            return Field(None, tuple(p for p in text.split(".") if p))
        if kind == "var":
            name, *path = text.split(".")
            return Field(name, tuple(path))
        if kind == "ident":
            if text in ("true", "false"):
                return Literal(text == "true")
            if text == "nil":
                return Literal(None)
            return Call(text, ())
        if (kind, text) == ("punct", "("):
            pipe = self.pipeline(allow_declare=False)
            if self.take() != ("punct", ")"):
                raise TemplateError(f"missing ) in {{{{ {self.src} }}}}")
            return pipe
        raise TemplateError(f"unexpected {text!r} in {{{{ {self.src} }}}}")


def _parse_pipe(src: str) -> Pipeline:
    parser = _PipeParser(_tokens(src), src)
    pipe = parser.pipeline()
    if parser.peek() is not None:
        raise TemplateError(f"unexpected {parser.peek()!r} in {{{{ {src} }}}}")
    return pipe


_KEYWORD = re.compile(r"(if|else|end|with|range|define|template|block|break|continue)\b\s*(.*)", re.S)


def _parse(source: str, name: str, defines: dict[str, list[Any]]) -> list[Any]:
    """The template's nodes; ``define`` blocks go into ``defines``."""
    pieces: list[tuple[str, str]] = []  # ("text", s) or ("action", s)
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        pieces.append(("text", text))
        pieces.append(("action", m.group(2).strip()))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = source[pos:]
    pieces.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))

    root: list[Any] = []
    stack: list[tuple[str, Any, list[Any]]] = [("root", None, root)]  # (kind, node, the list being filled)

    def current() -> list[Any]:
        return stack[-1][2]

    for kind, src in pieces:
        if kind == "text":
            if src:
                current().append(Text(src))
            continue
        if src.startswith("/*"):
            if not src.endswith("*/"):
                raise TemplateError(f"{name}: unclosed comment")
            continue
        m = _KEYWORD.fullmatch(src)
        if m is None:
            current().append(Output(_parse_pipe(src)))
            continue
        word, rest = m.group(1), m.group(2).strip()
        if word in ("if", "with", "range"):
            block = Block(word, _parse_pipe(rest))
            current().append(block)
            stack.append((word, block, block.body))
        elif word == "define":
            if stack[-1][0] != "root":
                raise TemplateError(f"{name}: define inside a block")
            body: list[Any] = []
            defines[json.loads(rest)] = body
            stack.append(("define", None, body))
        elif word == "else":
            top_kind, top, _ = stack[-1]
            if top_kind not in ("if", "with", "range", "elif"):
                raise TemplateError(f"{name}: else outside if, with or range")
            if rest.startswith(("if ", "if\t")):
                # else if X: an if nested in the else branch, closed by the same end
                nested = Block("if", _parse_pipe(rest[2:].strip()))
                top.orelse.append(nested)
                stack[-1] = (top_kind, top, top.orelse)
                stack.append(("elif", nested, nested.body))
            elif rest:
                raise TemplateError(f"{name}: unsupported else {rest!r}")
            else:
                stack[-1] = (top_kind, top, top.orelse)
        elif word == "end":
            if len(stack) == 1:
                raise TemplateError(f"{name}: end without a block")
            while stack[-1][0] == "elif":
                stack.pop()
            stack.pop()
        else:
            raise TemplateError(f"{name}: {{{{ {word} }}}} is not supported by this renderer")
    if len(stack) != 1:
        raise TemplateError(f"{name}: {stack[-1][0]} without end")
    return root


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


class _Scope:
    def __init__(self, dot: Any, root: Any) -> None:
        self.vars: list[dict[str, Any]] = [{"$": root}]
        self.dot = dot

    def lookup(self, name: str) -> Any:
        for frame in reversed(self.vars):
            if name in frame:
                return frame[name]
        raise TemplateError(f"undefined variable {name}")

    def set(self, name: str, value: Any) -> None:
        for frame in reversed(self.vars):
            if name in frame:
                frame[name] = value
                return
        raise TemplateError(f"undefined variable {name}")


@dataclass
class Template:
    """Named templates (``define``) shared by every file of a chart; :meth:`render` runs one file."""

    defines: dict[str, list[Any]] = field(default_factory=dict)
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=lambda: FUNCTIONS)

    def parse(self, source: str, name: str) -> list[Any]:
        return _parse(source, name, self.defines)

    def render(self, source: str, data: Any, name: str = "<template>") -> str:
        return self.run(self.parse(source, name), data)

    def run(self, nodes: list[Any], data: Any) -> str:
        out: list[str] = []
        self._nodes(nodes, _Scope(data, data), out)
        return "".join(out)

    def include(self, name: Any, data: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"no template {name!r} associated with template")
        return self.run(self.defines[name], data)

    def _nodes(self, nodes: list[Any], scope: _Scope, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Output):
                value = self._pipe(node.pipe, scope)
                if not node.pipe.declare:
                    out.append(show(value))
            else:
                self._block(node, scope, out)

    def _block(self, block: Block, scope: _Scope, out: list[str]) -> None:
        if block.kind == "range":
            self._range(block, scope, out)
            return
        scope.vars.append({})
        try:
            value = self._pipe(block.pipe, scope)
            if not truthy(value):
                self._nodes(block.orelse, scope, out)
            elif block.kind == "if":
                self._nodes(block.body, scope, out)
            else:
                outer, scope.dot = scope.dot, value
                try:
                    self._nodes(block.body, scope, out)
                finally:
                    scope.dot = outer
        finally:
            scope.vars.pop()

    def _range(self, block: Block, scope: _Scope, out: list[str]) -> None:
        pipe = block.pipe
        names = pipe.declare
        value = self._pipe(Pipeline(pipe.commands), scope)
        if isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, list):
            items = list(enumerate(value))
        elif value is None:
            items = []
        else:
            raise TemplateError(f"range can't iterate over {show(value)}")
        if not items:
            self._nodes(block.orelse, scope, out)
            return
        outer = scope.dot
        try:
            for key, item in items:
                frame: dict[str, Any] = {}
                if len(names) == 1:
                    frame[names[0]] = item
                elif len(names) == 2:
                    frame[names[0]], frame[names[1]] = key, item
                scope.vars.append(frame)
                scope.dot = item
                try:
                    self._nodes(block.body, scope, out)
                finally:
                    scope.vars.pop()
        finally:
            scope.dot = outer

    def _pipe(self, pipe: Pipeline, scope: _Scope) -> Any:
        value: Any = None
        for i, command in enumerate(pipe.commands):
            value = self._command(command, scope, piped=(value,) if i else ())
        if pipe.declare:
            if len(pipe.declare) != 1:
                raise TemplateError("two variables are only for range")
            if pipe.assign:
                scope.set(pipe.declare[0], value)
            else:
                scope.vars[-1][pipe.declare[0]] = value
        return value

    def _command(self, command: tuple[Any, ...], scope: _Scope, piped: tuple[Any, ...]) -> Any:
        head, args = command[0], command[1:]
        if isinstance(head, Call):
            return self._call(head.name, args, scope, piped)
        if args or piped:
            raise TemplateError(f"{head} is not a function: it takes no arguments")
        return self._operand(head, scope)

    def _call(self, name: str, args: tuple[Any, ...], scope: _Scope, piped: tuple[Any, ...]) -> Any:
        if name in ("and", "or"):
            operands = [*args, *(Literal(p) for p in piped)]
            if not operands:
                raise TemplateError(f"{name} needs arguments")
            value: Any = None
            for operand in operands:
                value = self._operand(operand, scope)
                if truthy(value) != (name == "and"):
                    return value
            return value
        values = [self._operand(a, scope) for a in args] + list(piped)
        if name == "include":
            if len(values) != 2:
                raise TemplateError("include takes a template name and its data")
            return self.include(values[0], values[1])
        fn = self.functions.get(name)
        if fn is None:
            raise TemplateError(f'function "{name}" not defined (not in this renderer\'s subset)')
        try:
            return fn(*values)
        except TypeError as exc:
            raise TemplateError(f"wrong arguments to {name}: {exc}") from None

    def _operand(self, operand: Any, scope: _Scope) -> Any:
        if isinstance(operand, Literal):
            return operand.value
        if isinstance(operand, Pipeline):
            return self._pipe(operand, scope)
        if isinstance(operand, Call):
            return self._call(operand.name, (), scope, ())
        if isinstance(operand, Field):
            value = scope.dot if operand.var is None else scope.lookup(operand.var)
            for i, name in enumerate(operand.path):
                if value is None:
                    where = ".".join(operand.path[:i]) or "."
                    raise TemplateError(f"nil pointer evaluating interface {{}}.{name} (at {where})")
                if not isinstance(value, dict):
                    raise TemplateError(f"can't evaluate field {name} in {show(value)!r}")
                value = value.get(name)
            return value
        raise TemplateError(f"cannot evaluate {operand!r}")
