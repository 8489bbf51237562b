"""Acting on a decision: the gauge alone, a signed webhook, or the scale subresource of a Kubernetes Deployment.

Webhook: ``POST`` of the decision as JSON with ``X-Tollgate-Signature: t=<unix seconds>,v1=<hex>``, the hex being
HMAC-SHA256(secret, ``"<t>." + body``); a receiver recomputes it and refuses a stale ``t`` (replay).
Kubernetes: ``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`` with a merge patch of
``spec.replicas``, authenticated with the pod's service-account token (read at each call: it rotates) and the
cluster's CA, over plain aiohttp.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from tollgate.clock import Clock
from tollgate.config.scaling import Actuator as ActuatorConfig
from tollgate.errors import ScalingActionFailed

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "SIGNATURE_HEADER",
    "Actuator",
    "GaugeOnly",
    "KubernetesScale",
    "ScalingActionFailed",
    "Webhook",
    "build_actuator",
    "sign",
]

log = logging.getLogger("tollgate.scaling")

SIGNATURE_HEADER = "X-Tollgate-Signature"


class Actuator(Protocol):
    name: str

    async def apply(self, pool: str, replicas: int, doc: dict[str, Any]) -> None:
        """Deliver ``replicas`` for ``pool`` (``doc``: the decision); raises :class:`ScalingActionFailed`."""
        ...

    async def close(self) -> None: ...


class GaugeOnly:
    """The desired-replicas gauge (always set by the scaler) is the whole action: KEDA or an HPA reads it."""

    name = "gauge"

    async def apply(self, pool: str, replicas: int, doc: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        return None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


Sleep = Callable[[float], Awaitable[None]]


async def _with_retries(
    what: str, attempts: int, backoff: float, sleep: Sleep, call: Callable[[], Awaitable[None]]
) -> None:
    import aiohttp  # here, not at the top: a gateway without an HTTP actuator never loads it

    last: Exception | None = None
    for n in range(attempts + 1):
        if n:
            await sleep(backoff * 2 ** (n - 1))
        try:
            await call()
            return
        except (aiohttp.ClientError, TimeoutError, OSError, ScalingActionFailed) as exc:
            last = exc
            log.warning("scaling: %s failed (attempt %d of %d): %s", what, n + 1, attempts + 1, exc)
    raise ScalingActionFailed(f"{what} failed after {attempts + 1} attempts: {last}")


class Webhook:
    name = "webhook"

    def __init__(self, config: ActuatorConfig, clock: Clock, sleep: Sleep = asyncio.sleep) -> None:
        assert config.url is not None and config.secret is not None
        # Loaded with the actuator, as the config is built: never first on a serving loop.
        importlib.import_module("aiohttp")
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def apply(self, pool: str, replicas: int, doc: dict[str, Any]) -> None:
        cfg = self._config
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout))
        session = self._session
        body = orjson.dumps({"pool": pool, "replicas": replicas, **doc})

        async def post() -> None:
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(cfg.secret or "", int(self._clock.time()), body),
            }
            async with session.post(cfg.url or "", data=body, headers=headers) as r:
                if r.status >= 300:
                    raise ScalingActionFailed(f"the webhook answered {r.status}")

        await _with_retries(f"webhook for pool {pool}", cfg.retries, cfg.backoff, self._sleep, post)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class KubernetesScale:
    name = "kubernetes"

    def __init__(self, config: ActuatorConfig, sleep: Sleep = asyncio.sleep) -> None:
        assert config.deployment is not None
        # Loaded with the actuator, as the config is built: never first on a serving loop.
        importlib.import_module("aiohttp")
        self._config = config
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    def _namespace(self) -> str:
        cfg = self._config
        if cfg.namespace:
            return cfg.namespace
        try:
            return Path(cfg.namespace_path).read_text().strip() or "default"
        except OSError:
            return "default"

    def url(self) -> str:
        base = self._config.api_server.rstrip("/")
        return f"{base}/apis/apps/v1/namespaces/{self._namespace()}/deployments/{self._config.deployment}/scale"

    async def apply(self, pool: str, replicas: int, doc: dict[str, Any]) -> None:
        cfg = self._config
        if self._session is None:
            import aiohttp

            ctx: ssl.SSLContext | bool = False
            if cfg.api_server.startswith("https://"):
                ctx = ssl.create_default_context(cafile=cfg.ca_path)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=cfg.timeout), connector=aiohttp.TCPConnector(ssl=ctx)
            )
        session = self._session
        body = orjson.dumps({"spec": {"replicas": replicas}})

        async def patch() -> None:
            try:
                token = (await asyncio.to_thread(Path(cfg.token_path).read_text)).strip()
            except OSError as exc:
                raise ScalingActionFailed(f"cannot read the service-account token {cfg.token_path}: {exc}") from exc
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"}
            async with session.patch(self.url(), data=body, headers=headers) as r:
                if r.status >= 300:
                    raise ScalingActionFailed(f"the Kubernetes API answered {r.status}: {(await r.text())[:200]}")

        await _with_retries(
            f"scale of deployment {cfg.deployment} for pool {pool}", cfg.retries, cfg.backoff, self._sleep, patch
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def build_actuator(config: ActuatorConfig, clock: Clock) -> Actuator:
    if config.type == "webhook":
        return Webhook(config, clock)
    if config.type == "kubernetes":
        return KubernetesScale(config)
    return GaugeOnly()
