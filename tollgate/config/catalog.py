"""The ``models:`` section: public model names, the deployments behind each, balancing and fallbacks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Literal

from pydantic import Field, Strict

from tollgate.config.model import Deployment, Model, Upstream
from tollgate.config.resilience import DeploymentLimits, HttpStatuses, ModelRouting
from tollgate.config.upstreams import AZURE_DEPLOYMENT, UpstreamDoc, azure_paths
from tollgate.config.validation import Doc, Found, check
from tollgate.config.values import Bool, NonEmptyStr, StrList, matching

__all__ = [
    "DEFAULT_ANTHROPIC_MAX_TOKENS",
    "MODEL_NAME",
    "DeploymentDoc",
    "ModelDoc",
    "build_model",
    "provider_field_problems",
]

# The max_tokens an Anthropic deployment sends when neither the client nor the config gives one.
DEFAULT_ANTHROPIC_MAX_TOKENS = 4096
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}"
Limit = Annotated[int, Strict(), Field(ge=1)]


class DeploymentDoc(Doc):
    """One upstream deployment of a public model."""

    upstream: NonEmptyStr
    """The name of an entry of upstreams."""
    model: Annotated[str, Strict(), matching(MODEL_NAME)] | None = None
    """The model name sent upstream; default: the public name."""
    azure_deployment: Annotated[str, Strict(), matching(AZURE_DEPLOYMENT)] | None = None
    """On a provider: azure upstream only: the Azure deployment serving the model; default: the model name. With
    the upstream's api_version it is in the URL; on Azure's v1 API it is the body's model."""
    max_tokens: Limit | None = None
    """On a provider: anthropic upstream only: the max_tokens sent when the client gives none (Anthropic requires
    one); default: the model's max_tokens, else 4096."""
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
    max_tokens: Limit | None = None
    """For its deployments on provider: anthropic upstreams: the max_tokens sent when the client gives none;
    default 4096."""
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


def provider_field_problems(
    models: Mapping[str, ModelDoc], upstreams: Mapping[str, UpstreamDoc]
) -> Iterator[tuple[str, str]]:
    """``(path under models, reason)`` for every deployment field its upstream's provider does not take."""
    for name, model in models.items():
        providers = {u.provider for d in model.deployments if (u := upstreams.get(d.upstream)) is not None}
        if model.max_tokens is not None and providers and "anthropic" not in providers:
            yield f"{name}.max_tokens", "applies only to a model with a deployment on a provider: anthropic upstream"
        for i, d in enumerate(model.deployments):
            upstream = upstreams.get(d.upstream)
            if d.max_tokens is not None and upstream is not None and upstream.provider != "anthropic":
                yield (
                    f"{name}.deployments[{i}].max_tokens",
                    f"applies only to a provider: anthropic upstream ({d.upstream!r} is {upstream.provider})",
                )
            if d.azure_deployment is not None and upstream is not None and upstream.provider != "azure":
                yield (
                    f"{name}.deployments[{i}].azure_deployment",
                    f"applies only to a provider: azure upstream ({d.upstream!r} is {upstream.provider})",
                )


def build_model(name: str, doc: ModelDoc, upstreams: Mapping[str, Upstream]) -> Model:
    return Model(
        name=name,
        deployments=tuple(_deployment(name, d, upstreams[d.upstream], doc.max_tokens) for d in doc.deployments),
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


def _deployment(name: str, doc: DeploymentDoc, upstream: Upstream, model_max_tokens: int | None) -> Deployment:
    model = doc.model or name
    paths = None
    max_tokens = None
    if upstream.provider == "anthropic":
        max_tokens = doc.max_tokens or model_max_tokens or DEFAULT_ANTHROPIC_MAX_TOKENS
    if upstream.provider == "azure":
        deployment = doc.azure_deployment or model
        paths = azure_paths(upstream.api_version, deployment)
        if upstream.api_version is None:
            model = deployment  # Azure's v1 API finds the deployment by the body's model
    return Deployment(
        upstream=doc.upstream,
        model=model,
        weight=doc.weight,
        limits=DeploymentLimits(rpm=doc.rpm, tpm=doc.tpm, max_concurrency=doc.max_concurrency),
        paths=paths,
        max_tokens=max_tokens,
        provider=upstream.provider,
    )
