"""After a failed attempt: what the failure says about the deployment, and where the request goes next.

Pure judgement, no I/O: the attempt loop (tollgate/pipeline/attempts.py) acts on it.
"""

from __future__ import annotations

import random
from typing import Literal

from tollgate.config.resilience import RetryPolicy
from tollgate.errors import UpstreamAuthError, UpstreamError, UpstreamStatus, UpstreamTimeout
from tollgate.routing.balancing import DeploymentState
from tollgate.routing.models import ModelRoute

__all__ = ["Verdict", "backoff", "judge", "outcome", "record_failure", "retryable"]

Verdict = Literal["retry", "fallback", "context", "relay"]
"""``retry`` (this model again), ``fallback`` (the next model), ``context`` (down the context-window
fallbacks), ``relay`` (give up: answer as the upstream did)."""

# How OpenAI-dialect servers and Anthropic say that the prompt does not fit the model's context window.
_CONTEXT_MARKERS = (b"context_length_exceeded", b"maximum context length", b"prompt is too long")


def retryable(exc: UpstreamError, policy: RetryPolicy) -> bool:
    """Whether the same model may be tried again after ``exc``."""
    if isinstance(exc, UpstreamAuthError):
        return False  # the same credential would be refused again
    if isinstance(exc, UpstreamStatus):
        return exc.status in policy.statuses
    if isinstance(exc, UpstreamTimeout):
        return bool(policy.on_timeout)
    if exc.code == "upstream_connect_error":
        return bool(policy.on_connect_error)
    return True  # a broken or empty stream, a malformed first event, a reset connection


def judge(exc: UpstreamError, current: ModelRoute, policy: RetryPolicy) -> Verdict:
    """What to do after a failed attempt on ``current``."""
    if isinstance(exc, UpstreamStatus):
        if exc.status == 400 and current.context_fallbacks and any(m in exc.body for m in _CONTEXT_MARKERS):
            return "context"
        if exc.status in current.fallback_on_status:
            return "fallback"
    if isinstance(exc, UpstreamAuthError):  # another deployment has another credential
        return "fallback" if exc.status in current.fallback_on_status else "retry"
    return "retry" if retryable(exc, policy) else "relay"


def record_failure(dstate: DeploymentState, permit: int, exc: UpstreamError, now: float) -> None:
    """Tell the deployment's breaker (and its cool-down) what the failure says about it."""
    if isinstance(exc, UpstreamStatus):
        if exc.retry_after:  # the provider asked us to stay away this long
            dstate.cooling_until = max(dstate.cooling_until, now + exc.retry_after)
        if exc.status == 429:  # its rate limit, not a fault: the breaker does not count it
            dstate.throttled += 1
            dstate.breaker.abandon(permit)
            return
        if exc.status < 500:
            dstate.breaker.success(permit)  # the deployment works; the request was refused on its merits
            return
    dstate.failures += 1
    dstate.breaker.failure(permit, exc.message)


def backoff(policy: RetryPolicy, rounds: int, last: UpstreamError | None) -> float:
    """Full jitter over an exponential step; an upstream Retry-After within the cap is waited out."""
    delay = random.uniform(0.0, min(policy.backoff_cap, policy.backoff_base * (2 ** (rounds - 1))))
    if isinstance(last, UpstreamStatus) and last.retry_after is not None and last.retry_after <= policy.retry_after_cap:
        delay = max(delay, last.retry_after)
    return delay


def outcome(exc: UpstreamError) -> str:
    """How a failed attempt shows in the request's trail (dead letters)."""
    return (
        f"status {exc.status}"
        if isinstance(exc, (UpstreamStatus, UpstreamAuthError))
        else (exc.code or type(exc).__name__)
    )
