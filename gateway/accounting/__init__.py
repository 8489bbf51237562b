"""Accounting: usage and cost per tenant, quotas and alerts, Prometheus metrics, access and audit logs."""

from .metrics import GatewayMetrics
from .recorder import Accounting

__all__ = ["Accounting", "GatewayMetrics"]
