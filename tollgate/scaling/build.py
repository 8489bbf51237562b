"""The scaler a gateway process runs: Redis for signals and the lease when the limiter's default store is Redis,
the database for history when there is one; in-process otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollgate.accounting.audit import AuditLog
from tollgate.accounting.metrics import GatewayMetrics
from tollgate.clock import Clock
from tollgate.config.scaling import ScalingConfig
from tollgate.config.store import StoreConfig
from tollgate.database import Database
from tollgate.scaling.board import LocalBoard, RedisBoard, SignalBoard
from tollgate.scaling.history import DatabaseHistory, HistoryStore, MemoryHistory
from tollgate.scaling.lease import Lease, RedisLease, SoleLease
from tollgate.scaling.metrics import ScalingMetrics
from tollgate.scaling.quota import QuotaSource
from tollgate.scaling.scaler import Autoscaler, PoolStates, process_id

__all__ = ["build_autoscaler", "redis_client"]


def redis_client(store: StoreConfig) -> Any:
    """A client of the limiter's default store when it is Redis, else None."""
    endpoint = store.default_store
    if endpoint.backend != "redis" or endpoint.url is None:
        return None
    from redis.asyncio import Redis, RedisCluster  # not loaded by a gateway that counts in-process

    if endpoint.cluster:
        return RedisCluster.from_url(endpoint.url)
    return Redis.from_url(endpoint.url)


def build_autoscaler(
    config: Callable[[], ScalingConfig],
    *,
    store: StoreConfig,
    database: Database | None,
    quotas: QuotaSource,
    audit: AuditLog | None,
    metrics: GatewayMetrics,
    states: PoolStates,
    clock: Clock,
    redis: Any = None,
) -> Autoscaler:
    holder = process_id()
    client = redis if redis is not None else redis_client(store)
    board: SignalBoard
    lease: Lease
    if client is not None:
        board = RedisBoard(client, store.key_prefix)
        lease = RedisLease(client, f"{store.key_prefix}:scaling:leader", holder, config().lease)
    else:
        board, lease = LocalBoard(), SoleLease(holder)
    history: HistoryStore = DatabaseHistory(database) if database is not None else MemoryHistory(config().history_size)
    scaler = Autoscaler(
        config,
        states=states,
        board=board,
        lease=lease,
        quotas=quotas,
        history=history,
        audit=audit,
        metrics=ScalingMetrics(metrics),
        clock=clock,
    )
    scaler.redis = client
    return scaler
