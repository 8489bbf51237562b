"""The attribute docstrings of the config records, read for the JSON Schema only.

A record documents a field with a string statement right under the field's
annotation. Those strings become the fields' descriptions in ``config/schema.json`` and the
admin API's OpenAPI document. Pydantic can read them itself
(``use_attribute_docstrings``), but does it for every record as the record is
built, which on Python 3.11 parses the record's whole module again for each
one: about a third of a second of every start (every worker, every reload's
first validation), for text that nothing but a JSON Schema shows. Here a module
is parsed once, when a schema is first asked for, and never on the way to
serving.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import sys

__all__ = ["attribute_docs"]


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring, for the fields of ``cls`` that have one, inherited fields included: a field's
    text is that of the nearest class (``cls`` first) that annotates it, so a record that declares a field again
    without a docstring leaves it undescribed, as pydantic does."""
    out: dict[str, str] = {}
    declared: set[str] = set()
    for klass in cls.__mro__:
        names = vars(klass).get("__annotations__", {})
        if not names:
            continue
        docs = _own_docs(klass)
        for name in names:
            if name not in declared:
                declared.add(name)
                if name in docs:
                    out[name] = docs[name]
    return out


def _own_docs(klass: type) -> dict[str, str]:
    """The docstrings in the body of ``klass`` itself (none for a class without a source, as one made at run time)."""
    return _module_docs(klass.__module__).get(klass.__qualname__.replace("<locals>.", ""), {})


@functools.cache
def _module_docs(name: str) -> dict[str, dict[str, str]]:
    """The docstrings of every class of module ``name``, by qualified name (``<locals>`` left out), read from one
    parse of its source; the tree itself is not kept."""
    module = sys.modules.get(name)
    if module is None:
        return {}
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):  # no source (compiled or made at run time): no descriptions
        return {}
    found: dict[str, dict[str, str]] = {}
    _collect(tree.body, "", found)
    return found


def _collect(scope: list[ast.stmt], prefix: str, found: dict[str, dict[str, str]]) -> None:
    for stmt in scope:
        if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            qualname = prefix + stmt.name
            if isinstance(stmt, ast.ClassDef):
                found.setdefault(qualname, _docs_in(stmt.body))  # the first of two same-named classes, as before
            _collect(stmt.body, qualname + ".", found)


def _docs_in(body: list[ast.stmt]) -> dict[str, str]:
    """An annotated name, then a string statement right under it."""
    docs: dict[str, str] = {}
    for stmt, after in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs
