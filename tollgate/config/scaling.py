"""The ``scaling:`` section: deployment pools, each with a replica policy on signals the gateway measures, and how
the decision is acted on.

::

    scaling:
      interval: 15s                      # every process samples its signals this often; the leader decides as often
      lease: 30s                         # the leader's lease in Redis; another process takes over within this long
      pools:
        vllm-llama:
          model: llama-3                 # a configured model; deployments default to all of the model's
          tenant: acme                   # dedicated to a tenant: its plan's max_instances caps the scale-ups
          min_replicas: 1
          max_replicas: 20
          targets: {inflight_per_replica: 8, p95_latency_ms: 2000}
          cooldown_up: 5m
          cooldown_down: 10m
          actuator: {type: kubernetes, namespace: models, deployment: vllm-llama}

A pool's desired replica count is scaled by ``scale_up_factor`` when the
busiest signal reaches ``up_threshold`` of its target per replica, and by
``scale_down_factor`` when every signal is under ``down_threshold`` of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field, Strict

from tollgate.config.validation import Found, check, section
from tollgate.config.values import Bool, Duration, FrozenMap, NonEmptyStr, Str, StrList, frozen_map

__all__ = [
    "POOL_NAME",
    "SIGNALS",
    "Actuator",
    "ScalingConfig",
    "ScalingPool",
    "ScalingTargets",
    "pool_ref_problems",
]

POOL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
SIGNALS = (
    "inflight_per_replica",
    "queue_per_replica",
    "tokens_per_second_per_replica",
    "p95_latency_ms",
    "upstream_429_per_minute",
)
Replicas = Annotated[int, Strict(), Field(ge=0, le=100_000)]
Target = Annotated[float, Field(gt=0)]
Ratio = Annotated[float, Field(gt=0, le=100)]


@section
@dataclass(frozen=True, slots=True)
class ScalingTargets:
    """What one replica should carry; the pool scales on whichever signal is furthest past its target."""

    inflight_per_replica: Target | None = None
    """Requests in flight (summed over every gateway process) per replica."""
    queue_per_replica: Target | None = None
    """Requests waiting in the deployments' queues per replica."""
    tokens_per_second_per_replica: Target | None = None
    """Tokens (prompt and completion) per second per replica."""
    p95_latency_ms: Target | None = None
    """The pool's p95 time to first byte; not divided by replicas."""
    upstream_429_per_minute: Target | None = None
    """429s from the pool's upstream per minute; not divided by replicas."""

    def given(self) -> dict[str, float]:
        return {name: value for name in SIGNALS if (value := getattr(self, name)) is not None}


@section
@dataclass(frozen=True, slots=True)
class Actuator:
    """How the decision is acted on: a Prometheus gauge (KEDA or an HPA reads it), a signed webhook, or the scale
    subresource of a Kubernetes Deployment."""

    type: Literal["gauge", "webhook", "kubernetes"] = "gauge"
    url: Str | None = None
    """webhook: where the decision is POSTed as JSON."""
    secret: Str | None = field(default=None, repr=False)
    """webhook: the HMAC-SHA256 key of the X-Tollgate-Signature header (t=<unix seconds>,v1=<hex of "t.body">)."""
    retries: Annotated[int, Strict(), Field(ge=0, le=10)] = 3
    """webhook and kubernetes: further attempts after a failed one, with doubling backoff."""
    backoff: Duration = 0.5
    timeout: Duration = 5.0
    namespace: Str | None = None
    """kubernetes: the Deployment's namespace (default: the service account's own)."""
    deployment: Str | None = None
    """kubernetes: the Deployment's name."""
    api_server: Str = "https://kubernetes.default.svc"
    token_path: Str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_path: Str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    namespace_path: Str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

    @check
    def has_what_its_type_needs(self) -> Found:
        if self.type == "webhook":
            if not self.url:
                yield "url", "a webhook actuator needs a url"
            elif not self.url.startswith(("http://", "https://")):
                yield "url", "must be an http:// or https:// URL"
            if not self.secret or len(self.secret) < 16:
                yield "secret", "a webhook actuator needs a secret of at least 16 characters"
        if self.type == "kubernetes":
            if not self.deployment:
                yield "deployment", "a kubernetes actuator needs the Deployment's name"
            if not self.api_server.startswith(("http://", "https://")):
                yield "api_server", "must be an https:// URL"


@section
@dataclass(frozen=True, slots=True)
class ScalingPool:
    """A set of deployments of one model and the policy that sizes them."""

    model: NonEmptyStr
    deployments: StrList | None = None
    """Upstream names of the model's deployments in the pool; absent: all of the model's."""
    tenant: Str | None = None
    """Dedicated to this tenant: scale-ups stop at its plan's max_instances (or quota_override)."""
    plan: Str | None = None
    """Dedicated to the tenants of this plan: scale-ups stop at the plan's max_instances (or quota_override)."""
    min_replicas: Replicas = 1
    max_replicas: Replicas = 10
    targets: ScalingTargets = ScalingTargets()
    scale_up_factor: Annotated[float, Field(gt=1, le=100)] = 1.5
    scale_down_factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    up_threshold: Ratio = 1.0
    """Scale up when a signal reaches this share of its target."""
    down_threshold: Ratio = 0.5
    """Scale down when every signal is below this share of its target."""
    cooldown_up: Duration = 300.0
    """Since the last scale-up, before another."""
    cooldown_down: Duration = 600.0
    """Since the last scale (either way), before a scale-down."""
    scale_up: Bool = True
    scale_down: Bool = True
    quota_override: Replicas | None = None
    """Replaces the plan's max_instances as the pool's quota."""
    initial_replicas: Replicas | None = None
    """The replica count assumed at start before any decision (default min_replicas)."""
    actuator: Actuator = Actuator()

    @check
    def bounds_and_targets(self) -> Found:
        if self.max_replicas < self.min_replicas:
            yield "max_replicas", "must be at least min_replicas"
        if self.max_replicas < 1:
            yield "max_replicas", "must be at least 1"
        if not self.targets.given():
            yield "targets", f"give at least one of {', '.join(SIGNALS)}"
        if self.down_threshold >= self.up_threshold:
            yield "down_threshold", "must be below up_threshold"
        if self.tenant is not None and self.plan is not None:
            yield "tenant", "give tenant or plan, not both"


@section
@dataclass(frozen=True, slots=True)
class ScalingConfig:
    """Deployment pools sized by the traffic the gateway sees; one process of the fleet decides at a time."""

    pools: FrozenMap[ScalingPool] = field(default_factory=frozen_map)
    interval: Duration = 15.0
    """How often every process samples its signals and the leader decides."""
    lease: Duration = 30.0
    """The leader's lease (Redis); another process takes over within this long when the leader dies."""
    history_size: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1000
    """Decisions kept in memory per pool when there is no database."""

    @check
    def pool_names_and_lease(self) -> Found:
        for name in self.pools:
            if not re.fullmatch(POOL_NAME, name):
                yield f"pools.{name}", f"a pool name must match {POOL_NAME}"
        if self.pools and self.lease <= self.interval:
            yield "lease", "must be longer than interval (the leader renews it every interval)"


def pool_ref_problems(
    pools: Mapping[str, ScalingPool], models: Mapping[str, object], plans: Mapping[str, object]
) -> Found:
    """Pools that name an unknown model, deployment or plan (tenants may come from the registry: not checked)."""
    for name, pool in pools.items():
        at = f"scaling.pools.{name}"
        model = models.get(pool.model)
        if model is None:
            yield f"{at}.model", f"unknown model {pool.model!r}"
            continue
        upstreams = {getattr(d, "upstream", None) for d in getattr(model, "deployments", ())}
        for i, d in enumerate(pool.deployments or ()):
            if d not in upstreams:
                yield f"{at}.deployments[{i}]", f"model {pool.model!r} has no deployment on upstream {d!r}"
        if pool.plan is not None and pool.plan not in plans:
            yield f"{at}.plan", f"unknown plan {pool.plan!r}"
