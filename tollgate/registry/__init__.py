"""Tenants, keys, namespaces and rules changed at runtime: their records and the stores they persist in."""
