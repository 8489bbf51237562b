"""Namespaces and rules changed at runtime: registry records in the YAML shape, laid over the config file's.

The registry holds ``ns:<name>`` and ``rule:<name>`` records beside the
tenants and keys; each is a namespace or rule document exactly as it would be
written under ``namespaces:`` / ``rules:`` in the config file. A
:class:`RuleBook` lays the records over the file's entries of the same name
(or adds them) and runs the config parser itself on the result, so a runtime
change is validated like the file is and every problem carries its field
path (``rules.rpm.limit: must be >= 1``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.config.reader import Node, Problems
from tollgate.config.rules import NANOS, Attach, MatcherSpec, NamespaceSpec, RulesConfig, RuleSpec, parse_rules

__all__ = [
    "NAMESPACE",
    "RULE",
    "Entry",
    "RuleBook",
    "is_rules_record",
    "matcher_doc",
    "namespace_doc",
    "record_name",
    "rule_doc",
]

log = logging.getLogger("tollgate.registry")

NAMESPACE = "ns"
RULE = "rule"
# Record kind -> the config section it stands for.
_SECTIONS = {NAMESPACE: "namespaces", RULE: "rules"}
# The config-center API's records (ids and its own fields, see .config_center): followed with the rules.
CONFIG_CENTER = "cc"


def is_rules_record(name: str) -> bool:
    kind = name.partition(":")[0]
    return kind in _SECTIONS or kind == CONFIG_CENTER


def record_name(kind: str, name: str) -> str:
    return f"{kind}:{name}"


# -- specs back to documents (the exact shape parse_rules reads) -------------


def matcher_doc(m: MatcherSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": m.type, "field": m.field, "op": m.op}
    if m.value is not None:
        doc["value"] = m.value
    if m.header is not None:
        doc["header"] = m.header
    return doc


def namespace_doc(ns: NamespaceSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"priority": ns.priority, "matchers": [matcher_doc(m) for m in ns.matchers]}
    if ns.match != "all":
        doc["match"] = ns.match
    if not ns.enabled:
        doc["enabled"] = False
    return doc


def _attach_doc(a: Attach) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if a.is_global:
        doc["global"] = True
    for field, values in (("plans", a.plans), ("tenants", a.tenants), ("namespaces", a.namespaces)):
        if values:
            doc[field] = list(values)
    return doc


def rule_doc(r: RuleSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": r.type,
        "attach": _attach_doc(r.attach),
        "priority": r.priority,
        "enabled": r.enabled,
        "shadow": r.shadow,
    }
    if r.type == "field_check":
        doc.update(field=r.field, op=r.op, message=r.message)
        if r.value is not None:
            doc["value"] = r.value
        return doc
    if r.type == "budget":
        doc.update(
            amount=r.limit / NANOS,
            per=r.per,
            window=r.window,
            scope=list(r.scope),
            fail_mode=r.fail_mode,
            on_exceed=r.on_exceed,
        )
        return doc
    doc.update(limit=r.limit, scope=list(r.scope), fail_mode=r.fail_mode)
    if r.type == "request_limit":
        doc.update(per=r.per, algorithm=r.algorithm)
    elif r.type == "token_limit":
        doc.update(per=r.per, on_exceed=r.on_exceed, count=r.count)
        if r.per != "month":  # a monthly token limit is always a calendar window; the parser takes no algorithm
            doc["algorithm"] = r.algorithm
    elif r.type == "quota":
        doc["unit"] = r.unit
    return doc


# -- the merged view -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One namespace or rule as in force: its document and where it comes from."""

    name: str
    doc: dict[str, Any]
    source: str  # "config" | "api" | "config+api"


class RuleBook:
    """The config file's namespaces and rules overlaid with the registry's records, as documents.

    Order is deterministic on every process: the file's entries in the file's
    order (a record replaces its entry in place), then entries that exist only
    as records, by name; the parser then sorts by priority, stably.
    """

    __slots__ = ("_file", "_api", "default_max_tokens")

    def __init__(self, file_rules: RulesConfig, records: Mapping[str, Any] | None = None) -> None:
        self.default_max_tokens = file_rules.default_max_tokens
        self._file: dict[str, dict[str, dict[str, Any]]] = {
            NAMESPACE: {ns.name: namespace_doc(ns) for ns in file_rules.namespaces},
            RULE: {r.name: rule_doc(r) for r in file_rules.rules},
        }
        self._api: dict[str, dict[str, Any]] = {NAMESPACE: {}, RULE: {}}
        for name, doc in (records or {}).items():
            kind, _, ident = name.partition(":")
            if kind in self._api and doc is not None:
                self._api[kind][ident] = doc

    @property
    def has_records(self) -> bool:
        return bool(self._api[NAMESPACE] or self._api[RULE])

    def is_declared(self, kind: str, name: str) -> bool:
        """True when the config file declares this namespace or rule."""
        return name in self._file[kind]

    def is_record(self, kind: str, name: str) -> bool:
        return name in self._api[kind]

    def entries(self, kind: str) -> dict[str, Entry]:
        file, api = self._file[kind], self._api[kind]
        out: dict[str, Entry] = {}
        for name, doc in file.items():
            out[name] = Entry(name, api[name], "config+api") if name in api else Entry(name, doc, "config")
        for name in sorted(api.keys() - file.keys()):
            out[name] = Entry(name, api[name], "api")
        return out

    def entry(self, kind: str, name: str) -> Entry | None:
        return self.entries(kind).get(name)

    def changed(self, kind: str, name: str, doc: Any) -> RuleBook:
        """A copy with the record ``kind:name`` set to ``doc`` (None: the record removed)."""
        book = object.__new__(RuleBook)
        book.default_max_tokens = self.default_max_tokens
        book._file = self._file
        book._api = {k: dict(v) for k, v in self._api.items()}
        if doc is None:
            book._api[kind].pop(name, None)
        else:
            book._api[kind][name] = doc
        return book

    def _without(self, dropped: Iterable[tuple[str, str]]) -> RuleBook:
        book = self
        for kind, name in dropped:
            book = book.changed(kind, name, None)
        return book

    def document(self) -> dict[str, Any]:
        """The ``namespaces:``, ``rules:`` and ``admission:`` sections as a config file would hold them."""
        return {
            "namespaces": {name: e.doc for name, e in self.entries(NAMESPACE).items()},
            "rules": {name: e.doc for name, e in self.entries(RULE).items()},
            "admission": {"default_max_tokens": self.default_max_tokens},
        }

    def parse(self) -> tuple[RulesConfig, list[str]]:
        """The merged sections through the config parser: ``(rules, problems)``; problems name field paths."""
        problems = Problems()
        root = Node(self.document(), "", problems)
        rules = parse_rules(root, problems)
        root.finish()
        return rules, problems.lines

    def compile(self) -> RulesConfig:
        """The rules to put in force. Never fails: records that no longer fit (say, a rule attached to a
        namespace the reloaded file dropped) are left out, with an error in the log, and the rest applies."""
        book = self
        for _attempt in range(8):
            rules, problems = book.parse()
            if not problems:
                return rules
            culprits = book._culprits(problems)
            log.error(
                "registry: runtime %s left out, they do not fit the rules in force: %s",
                ", ".join(f"{_SECTIONS[k]}.{n}" for k, n in sorted(culprits)) or "changes",
                "; ".join(problems),
            )
            if not culprits:
                break
            book = book._without(culprits)
        everything = [(kind, name) for kind, records in self._api.items() for name in records]
        rules, _problems = self._without(everything).parse()  # the file alone, valid since it loaded
        return rules

    def _culprits(self, problems: list[str]) -> set[tuple[str, str]]:
        """The records each problem's field path points into (the longest name wins: names may hold dots)."""
        found: set[tuple[str, str]] = set()
        for line in problems:
            best: tuple[str, str] | None = None
            for kind, section in _SECTIONS.items():
                for name in self._api[kind]:
                    prefix = f"{section}.{name}"
                    if (
                        line.startswith(prefix)
                        and line[len(prefix) : len(prefix) + 1] in (".", ":", "[")
                        and (best is None or len(name) > len(best[1]))
                    ):
                        best = (kind, name)
            if best is not None:
                found.add(best)
        return found
