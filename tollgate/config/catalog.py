"""The ``models:`` section: public model names, the deployments behind each, balancing and fallbacks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict

from tollgate.config.model import Deployment, Model
from tollgate.config.resilience import DeploymentLimits, HttpStatuses, ModelRouting
from tollgate.config.validation import Doc, Found, check
from tollgate.config.values import Bool, NonEmptyStr, StrList, matching

__all__ = ["MODEL_NAME", "DeploymentDoc", "ModelDoc", "build_model"]

MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}"
Limit = Annotated[int, Strict(), Field(ge=1)]


class DeploymentDoc(Doc):
    """One upstream deployment of a public model."""

    upstream: NonEmptyStr
    """The name of an entry of upstreams."""
    model: Annotated[str, Strict(), matching(MODEL_NAME)] | None = None
    """The model name sent upstream; default: the public name."""
    weight: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = 1
    """Share of traffic under weighted_round_robin; 0 = out of rotation."""
    rpm: Limit | None = None
    """The provider's own request limit for this deployment, per minute."""
    tpm: Limit | None = None
    """The provider's own token limit for this deployment, per minute."""
    max_concurrency: Limit | None = None
    """Requests in flight on this deployment at most (over it: queue or fall back, see the model's queue)."""


class ModelDoc(Doc):
    """A public model name: its deployments (upstream + the name that upstream knows it by), balancing, fallbacks."""

    deployments: tuple[DeploymentDoc, ...] = ()
    owned_by: NonEmptyStr = "tollgate"
    created: Annotated[int, Strict(), Field(ge=0)] = 0
    strategy: Literal["weighted_round_robin", "least_inflight", "lowest_latency"] = "weighted_round_robin"
    """lowest_latency: the EWMA of time to first byte."""
    fallbacks: StrList = ()
    """Models tried in order when this one fails or refuses, transitively; the body's model is rewritten and
    x-tollgate-model says who served."""
    context_window_fallbacks: StrList = ()
    """Models tried on 400 context_length_exceeded."""
    fallback_on_status: HttpStatuses = frozenset()
    """Upstream statuses that send the request straight to the fallbacks, with no retry on this model."""
    queue: Bool = False
    """Over every deployment's max_concurrency: wait in a fair queue (true) or fall back (false)."""

    @check
    def has_deployments(self) -> Found:
        if not self.deployments:
            yield "deployments", "at least one deployment is required"

    @check
    def deployments_are_distinct(self) -> Found:
        seen: set[tuple[str, str | None]] = set()
        for i, d in enumerate(self.deployments):
            key = (d.upstream, d.model)
            if key in seen:
                yield f"deployments[{i}]", "duplicates an earlier deployment of this model (same upstream and model)"
            seen.add(key)


def build_model(name: str, doc: ModelDoc) -> Model:
    return Model(
        name=name,
        deployments=tuple(
            Deployment(
                upstream=d.upstream,
                model=d.model or name,
                weight=d.weight,
                limits=DeploymentLimits(rpm=d.rpm, tpm=d.tpm, max_concurrency=d.max_concurrency),
            )
            for d in doc.deployments
        ),
        owned_by=doc.owned_by,
        created=doc.created,
        routing=ModelRouting(
            strategy=doc.strategy,
            fallbacks=doc.fallbacks,
            context_window_fallbacks=doc.context_window_fallbacks,
            fallback_on_status=doc.fallback_on_status,
            queue=doc.queue,
        ),
    )
