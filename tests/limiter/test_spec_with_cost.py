"""``LimitSpec.with_cost``: the same limit with another cost, every other field kept, the new cost checked."""

from __future__ import annotations

import dataclasses

import pytest

from tollgate.limiter.spec import LimitSpec

# Every field away from its default, so that one the copy forgot would show.
SPEC = LimitSpec(
    name="tpm.acme",
    kind="fixed_window",
    limit=5_000,
    window_ms=3_600_000,
    cost=7,
    scope_key=(("tenant", "acme"), ("user", "u1")),
    tenant="acme",
    fail_mode="local",
    shadow=True,
    calendar="hour",
    unit="output_tokens",
    slots=10,
)
SHAPING = LimitSpec(name="rps", kind="shaping", limit=10, window_ms=1_000, max_delay_ms=250)


@pytest.mark.parametrize("spec", [SPEC, SHAPING], ids=["fixed_window", "shaping"])
def test_with_cost_changes_the_cost_and_keeps_every_other_field(spec: LimitSpec) -> None:
    changed = spec.with_cost(42)
    assert changed.cost == 42
    for f in dataclasses.fields(LimitSpec):
        if f.name != "cost":
            assert getattr(changed, f.name) == getattr(spec, f.name), f.name
    assert changed == dataclasses.replace(spec, cost=42)


def test_with_cost_checks_the_new_cost_as_a_new_limit_would() -> None:
    with pytest.raises(ValueError, match="cost must be a non-negative integer"):
        SPEC.with_cost(-1)
    lease = LimitSpec(name="conc", kind="concurrency", limit=3)
    assert lease.with_cost(0).cost == 0
    with pytest.raises(ValueError, match="a concurrency limit costs 0 or 1 lease"):
        lease.with_cost(2)


def _made_with(spec: LimitSpec, cost: int) -> LimitSpec | str:
    """A new spec of ``spec``'s fields with ``cost``, or the message its checks raise."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(LimitSpec) if f.init}
    try:
        return LimitSpec(**{**fields, "cost": cost})
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize(
    "spec",
    [SPEC, SHAPING, LimitSpec(name="conc", kind="concurrency", limit=3), LimitSpec(name="g", kind="gcra", limit=9)],
    ids=["fixed_window", "shaping", "concurrency", "gcra"],
)
def test_with_cost_gives_what_a_new_spec_gives_for_any_cost(spec: LimitSpec) -> None:
    """A valid cost skips the checks of the fields it keeps: the spec, or the error, is still a new spec's."""
    for cost in (0, 1, 2, 42, 10**15, 10**15 + 1, -1, -(10**20), True, False):
        try:
            got: LimitSpec | str = spec.with_cost(cost)
        except ValueError as exc:
            got = str(exc)
        want = _made_with(spec, cost)
        assert got == want, cost
        if isinstance(got, LimitSpec):
            assert isinstance(want, LimitSpec) and got.reserves == want.reserves
