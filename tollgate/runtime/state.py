"""The running gateway's state: one compiled config version behind a single reference, swapped on reload."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tollgate.accounting import Accounting
from tollgate.clock import Clock, SystemClock
from tollgate.config import Config, load_config
from tollgate.config.rules import RulesConfig
from tollgate.config.scaling import ScalingPool
from tollgate.database import Database, migrate, open_database
from tollgate.errors import ConfigError
from tollgate.identity import IdentityRuntime, compile_identity
from tollgate.limiter import build_limiter
from tollgate.pipeline.account import AccountDeps
from tollgate.pipeline.admit import AdmitDeps
from tollgate.pipeline.cache import CacheDeps
from tollgate.pipeline.handler import Stages
from tollgate.pipeline.identify import IdentifyDeps
from tollgate.pipeline.route import AttemptCounters, RouteDeps
from tollgate.policy.lease_wait import LeaseWaiters
from tollgate.policy.matchers import NamespaceTable
from tollgate.policy.response_cache import ResponseCache
from tollgate.policy.rules import RuleSet
from tollgate.policy.settlement import Settler
from tollgate.policy.shedding import Shedder
from tollgate.registry.registry import Registry
from tollgate.registry.rule_records import RuleBook
from tollgate.routing.balancing import DeploymentRegistry, DeploymentState
from tollgate.routing.deadletter import DeadLetterLog
from tollgate.routing.degradation import Hotspots, ProactiveFallbacks
from tollgate.routing.health import HealthProber
from tollgate.routing.models import ModelRoute, compile_routes
from tollgate.routing.retry_budget import RetryBudget
from tollgate.scaling.build import build_autoscaler
from tollgate.scaling.quota import RegistryQuotas
from tollgate.upstream.pool import UpstreamPool

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from tollgate.accounting.tracing import Tracing

__all__ = ["GatewayState", "Runtime"]

log = logging.getLogger("tollgate.runtime")

_PROBE_TIMEOUT = 2.0  # seconds a readiness probe waits for a store's answer


class Runtime:
    """Everything compiled from one config version; immutable once built, so a request reads one consistent version.

    ``rules_config`` is the config's namespaces and rules with the registry's runtime changes laid over
    them; when only those change, :meth:`with_rules` makes the next Runtime without recompiling the rest.
    ``stages`` is what the pipeline's stages work with, made by ``wire`` from this version and the
    process's resources (tollgate/pipeline/handler.py).
    """

    __slots__ = ("config", "version", "routes", "identity", "rules_config", "namespaces", "rules", "stages", "_wire")

    def __init__(
        self,
        config: Config,
        version: int,
        deployments: DeploymentRegistry,
        wire: Callable[[Runtime], Stages],
        rules: RulesConfig | None = None,
    ) -> None:
        self.config = config
        self.version = version
        self.routes: Mapping[str, ModelRoute] = compile_routes(config, deployments)
        self.identity: IdentityRuntime = compile_identity(config)
        self._wire = wire
        self._compile_rules(rules if rules is not None else config.rules)

    def _compile_rules(self, rules: RulesConfig) -> None:
        self.rules_config = rules
        self.namespaces = NamespaceTable(rules.namespaces)
        self.rules = RuleSet(rules, self.config.accounting.quotas.spend_limit)
        self.stages = self._wire(self)

    def with_rules(self, rules: RulesConfig) -> Runtime:
        """The same config version with other namespaces and rules."""
        runtime = object.__new__(Runtime)
        runtime.config, runtime.version, runtime.routes, runtime.identity, runtime._wire = (
            self.config,
            self.version,
            self.routes,
            self.identity,
            self._wire,
        )
        runtime._compile_rules(rules)
        return runtime


class GatewayState:
    """Owns the current :class:`Runtime` and the resources that outlive a config version."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | Path | None = None,
        clock: Clock | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        """``span_exporter`` replaces the OTLP exporter of ``tracing:`` (the SDK's in-memory one, in tests)."""
        self._versions = itertools.count(1)
        # Upstream resilience: live per-deployment state (breakers, latencies, in-flight) and gateway-wide
        # budgets and logs; all survive reloads. Counters stay plain attributes for the metrics exporter.
        self.clock: Clock = clock or SystemClock()
        self.deployments = DeploymentRegistry(self.clock)
        res = config.resilience
        self.retry_budget = RetryBudget(res.retries, self.clock)
        self.dead_letters = DeadLetterLog(res.dead_letter_size, self.clock)
        self.shedder = Shedder(res.shedding)
        self.proactive = ProactiveFallbacks(res.proactive_fallback, self.clock)
        self.hotspots = Hotspots(res.hotspot, self.clock)
        self.counters = AttemptCounters()
        self.health = HealthProber(self)
        self.config_path = Path(config_path) if config_path is not None else None
        base_dir = config.state_dir  # relative state paths (SQLite, registry file, ...) are read under it
        # The database of record (database.url), migrated at start; None without one.
        db = config.database
        self.database: Database | None = (
            open_database(db.url, base_dir=base_dir, pool_size=db.pool_size, timeout=db.timeout) if db.url else None
        )
        # Tenants and keys: the config's plus runtime changes; outlives config versions.
        self.registry = Registry(config, base_dir=base_dir, clock=self.clock, database=self.database)
        self.registry.on_rules_change = self._rules_changed
        # OpenTelemetry (read at start): the SDK is imported only when the config enables it.
        self.tracing: Tracing | None = None
        if config.tracing.enabled:
            from tollgate.accounting.tracing import Tracing

            self.tracing = Tracing(config.tracing, span_exporter)
        self.pool = UpstreamPool(self.clock, inject=self.tracing.inject if self.tracing is not None else None)
        # Limits: one limiter (and its store connections) for the process; settling runs in the background.
        self.limiter = build_limiter(config.store, clock=self.clock)
        self.lease_waiters = LeaseWaiters(res.queue.size, clock=self.clock)
        # Usage, cost, quotas, metrics, access and audit logs; flushed in the background, and on close.
        self.accounting = Accounting(config, state=self)
        self.settler = Settler(
            self.limiter,
            on_release=self.lease_waiters.released,
            metrics=self.accounting.metrics,
            pricing=self.accounting.pricing,
            clock=self.clock,
        )
        self._account = AccountDeps(self.settler, self.accounting, self.accounting.wall, self.clock)
        # The response cache (used only while cache.enabled); its Redis is the limiter's default store, if one.
        self.response_cache = ResponseCache(config.cache, config.store, self.clock)
        self.accounting.metrics.add_sampler(lambda m: m.cache_bytes.set(self.response_cache.local.size))
        self._reload_lock = asyncio.Lock()
        self.runtime = Runtime(config, next(self._versions), self.deployments, self._stages)
        # The autoscaling advisor: samples every pool here, decides when this process holds the fleet's lease.
        self.scaler = build_autoscaler(
            lambda: self.config.scaling,
            store=config.store,
            database=self.database,
            quotas=RegistryQuotas(self.registry, lambda: self.config.plans),
            audit=self.accounting.audit,
            metrics=self.accounting.metrics,
            states=self._pool_states,
            clock=self.clock,
        )

    def _pool_states(self, pool: ScalingPool) -> tuple[DeploymentState, ...]:
        """The live states of a scaling pool's deployments in the config version in force."""
        route = self.runtime.routes.get(pool.model)
        if route is None:
            return ()
        wanted = pool.deployments
        return tuple(s for s in route.states if wanted is None or s.upstream in wanted)

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def start(self) -> None:
        if self.database is not None:  # connected and its schema current before anything reads it
            await self.database.open()
            try:
                applied = await migrate(self.database, clock=self.clock)
            except BaseException:
                await self.database.close()
                raise
            if applied:
                log.info("database %s migrated to version %d", self.database.description, applied[-1])
        await self.limiter.start()  # store connections open and scripts loaded before the first request
        await self.pool.apply(self.config.upstreams)
        self.shedder.start()
        self.health.start()
        await self.accounting.start()
        self.settler.start()
        self.scaler.start()
        if self.config.cache.enabled:
            await self.response_cache.start()

    async def close(self) -> None:
        await self.scaler.close()
        await self.response_cache.close()
        await self.health.close()
        await self.shedder.close()
        await self.settler.close()  # settle what finished before the usage flush and before the store closes
        await self.accounting.close()
        await self.limiter.close()
        await self.pool.close()
        if self.database is not None:
            await self.database.close()
        if self.tracing is not None:
            await self.tracing.close()  # the spans of the last requests exported

    def servable_models(self) -> dict[str, bool]:
        """Each model of the config in force, and whether any of its deployments is usable now: its breaker not
        open (or its cool-down over) and its health probes not failing (``DeploymentState.usable``)."""
        return {name: any(s.usable for s in route.states) for name, route in self.runtime.routes.items()}

    async def readiness_problems(self) -> list[str]:
        """Why the gateway should not get traffic now: no model at all can be served. Empty when it can serve one."""
        servable = self.servable_models()
        if not any(servable.values()):
            return [
                "no model can be served: every deployment of every model has its breaker open or fails its "
                "health probes"
            ]
        return []

    async def store_problems(self) -> list[str]:
        """The registry store, the limiter's Redis stores and the database that do not answer now, each by name
        (asked in parallel): the gateway serves on without them, from what it holds."""
        asked: list[tuple[str, Awaitable[object]]] = []
        for name in self.config.store.stores:
            try:
                engine = self.limiter.engine(name)
            except ValueError:  # a store added by a reload: in force only after a restart
                continue
            if engine.remote:
                asked.append((f"the limiter store {name!r}", engine.ping(_PROBE_TIMEOUT)))
        if self.database is not None:
            probe = asyncio.wait_for(self.database.fetchval("SELECT 1"), _PROBE_TIMEOUT)
            asked.append((f"the database {self.database.description}", probe))
        answers = await asyncio.gather(*(probe for _what, probe in asked), return_exceptions=True)
        return self.registry.problems() + [
            f"{what} is down: {answer or type(answer).__name__}"
            for (what, _probe), answer in zip(asked, answers)
            if isinstance(answer, Exception)
        ]

    async def apply(self, config: Config) -> Runtime:
        """Swap in a new config version; on any failure the old one stays in force."""
        async with self._reload_lock:
            old = self.runtime
            if config.listeners != old.config.listeners:
                log.warning("listener changes in %s take effect only after a restart", config.source)
            if config.store != old.config.store:
                log.warning("store changes in %s take effect only after a restart", config.source)
            if config.database != old.config.database:
                log.warning("database changes in %s take effect only after a restart", config.source)
            if config.tracing != old.config.tracing or config.logging != old.config.logging:
                log.warning("tracing and logging changes in %s take effect only after a restart", config.source)
            generation = self.registry.rules_generation
            runtime = Runtime(
                config, next(self._versions), self.deployments, self._stages, self.effective_rules(config)
            )
            await self.pool.apply(config.upstreams)
            self.registry.use_config(config)
            if self.registry.rules_generation != generation:  # namespaces or rules changed while we awaited
                runtime = runtime.with_rules(self.effective_rules(config))
            self.runtime = runtime
            self._configure_resilience(config)
            self.response_cache.configure(config.cache)
            if config.cache.enabled:
                await self.response_cache.start()
            self.scaler.start()  # pools added by this version start the loop
            log.info("config version %d in force (from %s)", runtime.version, config.source)
            return runtime

    def _stages(self, runtime: Runtime) -> Stages:
        """What the pipeline's stages work with under ``runtime``: its compiled parts and this process's resources."""
        config, clock = runtime.config, self.clock
        metrics = self.accounting.metrics
        route = RouteDeps(
            routes=runtime.routes,
            resilience=config.resilience,
            clock=clock,
            shedder=self.shedder,
            pool=self.pool,
            retry_budget=self.retry_budget,
            counters=self.counters,
            proactive=self.proactive,
            hotspots=self.hotspots,
            metrics=metrics,
            dead_letters=self.dead_letters,
        )
        cached = config.cache
        stages = Stages(
            clock=clock,
            shedder=self.shedder,
            proxies=runtime.identity.proxies,
            guard=config.guard,
            identify=IdentifyDeps(runtime.identity, self.registry),
            match=runtime.namespaces,
            admit=AdmitDeps(
                runtime.rules, self.limiter, metrics, self.lease_waiters, self.accounting.pricing, self.settler, clock
            ),
            route=route,
            account=self._account,
            cache=(
                CacheDeps(self.response_cache, cached, route, metrics, clock, cached.price_per_1k_tokens * 1e6)
                if cached.enabled
                else None
            ),
        )
        if self.tracing is None:
            return stages
        from tollgate.pipeline.traces import with_tracing

        return with_tracing(stages, self.tracing)

    def effective_rules(self, config: Config) -> RulesConfig:
        """The config's namespaces and rules with the runtime changes from the registry laid over them."""
        book = RuleBook(config.rules, self.registry.rule_records)
        return book.compile() if book.has_records else config.rules

    def _rules_changed(self) -> None:
        """The registry's namespaces or rules changed (here or on another process): swap in a recompiled set."""
        runtime = self.runtime
        self.runtime = runtime.with_rules(self.effective_rules(runtime.config))
        log.info(
            "namespaces and rules changed at runtime: %d namespaces, %d rules in force (config version %d)",
            len(self.runtime.rules_config.namespaces),
            len(self.runtime.rules_config.rules),
            runtime.version,
        )

    def _configure_resilience(self, config: Config) -> None:
        res = config.resilience
        self.retry_budget.configure(res.retries)
        self.dead_letters.resize(res.dead_letter_size)
        self.shedder.configure(res.shedding)
        self.proactive.configure(res.proactive_fallback)
        self.hotspots.configure(res.hotspot)
        self.deployments.prune(s.key for r in self.runtime.routes.values() for s in r.states)

    def dead_letter_records(self, limit: int | None = None) -> list[dict[str, object]]:
        """Requests that failed after every retry and fallback (metadata only), oldest first: for the admin API."""
        return self.dead_letters.records(limit)

    def resilience_snapshot(self) -> dict[str, object]:
        """Breakers, in-flight counts, latencies and resilience counters as JSON-able data: for the admin API."""
        c = self.counters
        return {
            "deployments": self.deployments.snapshot(),
            "requests": c.requests,
            "attempts": c.attempts,
            "retries": c.retries,
            "retry_budget_refused": c.budget_refused,
            "fallbacks": dict(c.fallbacks),
            "queue_refused": c.queue_refused,
            "failed": c.failed,
            "dead_letters": self.dead_letters.total,
            "shed": dict(self.shedder.shed),
            "inflight": self.shedder.inflight,
            "loop_lag": self.shedder.lag,
            "proactive_fallbacks": dict(self.proactive.diversions),
            "hotspots": dict(self.hotspots.flags),
        }

    async def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config file. Returns ``(applied, problems)``; a refused file changes nothing."""
        if self.config_path is None:
            return False, ["the gateway was not started from a config file"]
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error(
                "reload refused, keeping config version %d:\n  %s", self.runtime.version, "\n  ".join(exc.problems)
            )
            return False, exc.problems
        await self.apply(config)
        return True, []
