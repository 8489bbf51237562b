"""Degradation: proactive fallback for a model that is failing or slow, and hotspot detection per tenant and model.

* :class:`ProactiveFallbacks` watches each model's error rate and p95 latency
  over a sliding window; past a trigger (with at least ``min_calls`` calls) the
  model is *diverted* for ``hold`` seconds: its requests start at its first
  fallback instead of waiting for breakers to open one by one.
* :class:`Hotspots` follows each (tenant, model)'s request rate against its
  own slow baseline (an EWMA over ``baseline`` seconds); a window whose rate
  passes ``factor`` × max(baseline, ``min_rate``) flags the pair for ``hold``
  seconds and, with ``limit_rate`` set, holds it to that many requests per
  second meanwhile (429).

Both read an injected clock and keep their counters as plain dicts.
"""

from __future__ import annotations

import logging
import math
from collections import deque

from tollgate.clock import Clock
from tollgate.config.resilience import HotspotPolicy, ProactiveFallback
from tollgate.errors import RateLimited

__all__ = ["Hotspots", "ProactiveFallbacks"]

log = logging.getLogger("tollgate.degradation")


class _ModelWatch:
    __slots__ = ("window_start", "calls", "errors", "latencies", "prev_calls", "prev_errors")

    def __init__(self, now: float) -> None:
        self.window_start = now
        self.calls = 0
        self.errors = 0
        self.prev_calls = 0
        self.prev_errors = 0
        self.latencies: deque[float] = deque(maxlen=256)


class ProactiveFallbacks:
    __slots__ = ("policy", "enabled", "clock", "_watches", "_until", "diversions")

    def __init__(self, policy: ProactiveFallback, clock: Clock) -> None:
        self.policy = policy
        self.enabled = policy.enabled  # read on every answer: the policy's property computes it
        self.clock = clock
        self._watches: dict[str, _ModelWatch] = {}
        self._until: dict[str, float] = {}
        self.diversions: dict[str, int] = {}  # model -> times diverted

    def configure(self, policy: ProactiveFallback) -> None:
        self.policy = policy
        self.enabled = policy.enabled
        if not policy.enabled:
            self._watches.clear()
            self._until.clear()

    def diverted(self, model: str) -> bool:
        until = self._until.get(model)
        if until is None:
            return False
        if self.clock.monotonic() < until:
            return True
        del self._until[model]
        log.info("model %s: proactive fallback over, back to its own deployments", model)
        return False

    def observe(self, model: str, failed: bool, latency: float) -> None:
        if not self.enabled:
            return
        policy = self.policy
        now = self.clock.monotonic()
        watch = self._watches.get(model)
        if watch is None:
            watch = self._watches[model] = _ModelWatch(now)
        half = policy.window / 2
        if now - watch.window_start >= half:  # two half-windows: the previous and the current
            stale = now - watch.window_start >= policy.window
            watch.prev_calls, watch.prev_errors = (0, 0) if stale else (watch.calls, watch.errors)
            watch.calls = watch.errors = 0
            watch.window_start = now
        watch.calls += 1
        if failed:
            watch.errors += 1
        else:
            watch.latencies.append(latency)
        calls = watch.calls + watch.prev_calls
        if calls < policy.min_calls or model in self._until:
            return
        reason = None
        errors = watch.errors + watch.prev_errors
        if policy.error_rate and errors >= policy.error_rate * calls:
            reason = f"error rate {errors / calls:.0%} over {calls} calls"
        elif policy.p95_latency and not failed and len(watch.latencies) >= policy.min_calls:
            ordered = sorted(watch.latencies)
            p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
            if p95 >= policy.p95_latency:
                reason = f"p95 latency {p95 * 1000:.0f} ms"
        if reason is not None:
            self._until[model] = now + policy.hold
            self.diversions[model] = self.diversions.get(model, 0) + 1
            watch.calls = watch.errors = watch.prev_calls = watch.prev_errors = 0
            watch.latencies.clear()
            log.warning("model %s: %s; its fallbacks serve it for %gs", model, reason, policy.hold)


class _Rate:
    __slots__ = ("window_start", "count", "baseline", "flagged_until", "second", "in_second")

    def __init__(self, now: float) -> None:
        self.window_start = now
        self.count = 0
        self.baseline = 0.0
        self.flagged_until = 0.0
        self.second = 0
        self.in_second = 0


class Hotspots:
    __slots__ = ("policy", "clock", "_rates", "flags", "limited")

    def __init__(self, policy: HotspotPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self._rates: dict[tuple[str, str], _Rate] = {}
        self.flags: dict[str, int] = {}  # "tenant/model" -> times flagged
        self.limited: dict[str, int] = {}  # "tenant/model" -> requests refused while flagged

    def configure(self, policy: HotspotPolicy) -> None:
        self.policy = policy
        if not policy.enabled:
            self._rates.clear()

    def flagged(self, tenant: str, model: str) -> bool:
        rate = self._rates.get((tenant, model))
        return rate is not None and self.clock.monotonic() < rate.flagged_until

    def hit(self, tenant: str, model: str) -> None:
        """Count one request; raise :class:`RateLimited` when the pair is flagged and over its temporary limit."""
        policy = self.policy
        now = self.clock.monotonic()
        key = (tenant, model)
        rate = self._rates.get(key)
        if rate is None:
            if len(self._rates) > 100_000:  # bound the memory: forget everyone's history rather than grow
                self._rates.clear()
            rate = self._rates[key] = _Rate(now)
        elapsed = now - rate.window_start
        if elapsed >= policy.window:
            windows = int(elapsed // policy.window)
            alpha = min(1.0, policy.window / policy.baseline)
            observed = rate.count / policy.window
            rate.baseline += alpha * (observed - rate.baseline)
            for _ in range(min(windows - 1, 64)):  # idle windows pull the baseline down too
                rate.baseline -= alpha * rate.baseline
            rate.count = 0
            rate.window_start += windows * policy.window
        rate.count += 1
        if (
            now >= rate.flagged_until
            and rate.count > policy.factor * max(rate.baseline, policy.min_rate) * policy.window
        ):
            rate.flagged_until = now + policy.hold
            name = f"{tenant}/{model}"
            self.flags[name] = self.flags.get(name, 0) + 1
            log.warning(
                "hotspot: %s at %d requests in %gs, baseline %.2f/s; stricter limit %s for %gs",
                name,
                rate.count,
                policy.window,
                rate.baseline,
                f"{policy.limit_rate:g}/s" if policy.limit_rate else "off",
                policy.hold,
            )
        if policy.limit_rate and now < rate.flagged_until:
            second = int(now)
            if second != rate.second:
                rate.second, rate.in_second = second, 0
            rate.in_second += 1
            if rate.in_second > policy.limit_rate:
                name = f"{tenant}/{model}"
                self.limited[name] = self.limited.get(name, 0) + 1
                raise RateLimited(
                    f"requests for {model!r} jumped far above their usual rate; temporarily limited to {policy.limit_rate:g}/s",
                    code="hotspot_limited",
                    headers={"Retry-After": "1"},
                )
