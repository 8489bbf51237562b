"""The scaler's Prometheus metrics, in the gateway's registry (or its multiprocess files)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from tollgate.accounting.metrics import GatewayMetrics

__all__ = ["ScalingMetrics"]


class ScalingMetrics:
    """``tollgate_scaling_desired_replicas{pool}`` is what KEDA or an HPA on external metrics reads."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        reg = None if metrics.multiprocess_path else metrics.registry
        self.desired = Gauge(
            "tollgate_scaling_desired_replicas",
            "Replicas the scaler wants for the pool (set by the deciding process).",
            ("pool",),
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self.decisions = Counter(
            "tollgate_scaling_decisions",
            "Scaling decisions that changed a pool, by direction.",
            ("pool", "direction"),
            registry=reg,
        )
        self.blocked = Counter(
            "tollgate_scaling_blocked",
            "Scale-ups stopped by the tenant's or plan's instance quota.",
            ("pool",),
            registry=reg,
        )
        self.quota_unreadable = Counter(
            "tollgate_scaling_quota_unreadable",
            "Scale-ups that went ahead without their quota because it could not be read (fail open).",
            ("pool",),
            registry=reg,
        )
        self.actuator_failures = Counter(
            "tollgate_scaling_actuator_failures",
            "Decisions an actuator could not deliver after its retries.",
            ("pool", "actuator"),
            registry=reg,
        )
