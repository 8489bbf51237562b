"""Reading a limit's counter without consuming anything (the admin API, tests)."""

from __future__ import annotations

from tollgate.limiter.decision import LimitState
from tollgate.limiter.leases import LeaseMixin
from tollgate.limiter.script_args import PEEK_STRIDE, limit_state, peek_args
from tollgate.limiter.spec import LimitSpec

__all__ = ["CounterMixin"]


class CounterMixin(LeaseMixin):
    """peek and counter."""

    async def peek(self, spec: LimitSpec, *, store: str | None = None) -> LimitState:
        """The current state of a limit without consuming anything; raises StoreError if the store fails."""
        return (await self.counter(spec, store=store))[0]

    async def counter(self, spec: LimitSpec, *, store: str | None = None) -> tuple[LimitState, int]:
        """A limit's state and the units it counts now (past the limit after an overdraft); raises StoreError."""
        key = self._keys.key(spec)
        reply = await self._engine(store or self.default_store).run("peek", [key], peek_args([spec]))
        return limit_state(spec, reply, 2), reply[2 + PEEK_STRIDE - 1]
