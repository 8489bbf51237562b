"""One call of a limiter script: which script, its KEYS and its ARGV.

A module of its own so that it is compiled: the hot path builds one per script call, and a frozen dataclass's
constructor (interpreted, one ``object.__setattr__`` per field) cost about 0.4 us of it. The engine protocol beside
it stays interpreted (a compiled class cannot be a runtime-checkable Protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = ["Arg", "ScriptCall"]

Arg = str | int


class ScriptCall:
    """One call of a script: its name (``admit``, ``settle``, ...), KEYS and ARGV. Never changed once made."""

    __slots__ = ("script", "keys", "args")

    def __init__(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> None:
        self.script: Final = script
        self.keys: Final = keys
        self.args: Final = args

    def __eq__(self, other: object) -> bool:
        if type(other) is not ScriptCall:
            return NotImplemented
        return self.script == other.script and self.keys == other.keys and self.args == other.args

    def __hash__(self) -> int:
        return hash((self.script, tuple(self.keys), tuple(self.args)))

    def __repr__(self) -> str:
        return f"ScriptCall(script={self.script!r}, keys={self.keys!r}, args={self.args!r})"
