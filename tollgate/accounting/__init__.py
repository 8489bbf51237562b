"""Accounting: usage and cost per tenant, quotas and alerts, Prometheus metrics, access and audit logs."""

from tollgate.accounting.metrics import GatewayMetrics
from tollgate.accounting.recorder import Accounting

__all__ = ["Accounting", "GatewayMetrics"]
