"""What a translation does with a parameter that has no equivalent: refuse it (400 naming it) or drop and list it."""

from __future__ import annotations

from tollgate.errors import BadRequest

__all__ = ["TranslationError", "Unsupported"]


class TranslationError(BadRequest):
    """The request holds something the other dialect cannot express; ``param`` names it (the edge answers 400)."""

    default_code = "unsupported_parameter"


class Unsupported:
    """Collects what one translation dropped, or raises at the first untranslatable parameter when dropping is off.

    ``hint`` is for fields that only steer cost or caching (``cache_control``): they are dropped and
    listed even without the flag, since the answer does not change without them.
    """

    __slots__ = ("drop", "dropped")

    def __init__(self, drop: bool) -> None:
        self.drop = drop
        self.dropped: list[str] = []

    def refuse(self, param: str, target: str) -> None:
        if not self.drop:
            raise TranslationError(f"{param!r} has no equivalent in the {target} API", param=param)
        self.dropped.append(param)

    def hint(self, param: str) -> None:
        self.dropped.append(param)
