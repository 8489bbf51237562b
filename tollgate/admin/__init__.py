"""The admin API: its own listener (loopback by default) and bearer token; tenants, keys, plans, health."""

from __future__ import annotations

from tollgate.admin.app import make_admin_app

__all__ = ["make_admin_app"]
