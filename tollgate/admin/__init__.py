"""The admin API: its own listener (loopback by default); principals with roles (tokens, OIDC sign-on); every admin
route, its generated OpenAPI."""

from __future__ import annotations

from tollgate.admin.app import make_admin_app
from tollgate.admin.routes import Probes, ReloadAction

__all__ = ["Probes", "ReloadAction", "make_admin_app"]
