"""The limiter's policy side: limits, keys, all-or-nothing admission, settling and leases; no Redis client here."""

from tollgate.limiter.base import LOCAL_STORE, LimiterStats
from tollgate.limiter.decision import (
    Consumed,
    Decision,
    Extension,
    Lease,
    LimitState,
    Reservation,
    SettledLimit,
    Settlement,
)
from tollgate.limiter.factory import build_engine, build_limiter
from tollgate.limiter.fail_modes import FAIL_CLOSED_RETRY_MS
from tollgate.limiter.keys import KeyBuilder, encode_value, tenant_key_pattern
from tollgate.limiter.limiter import Limiter
from tollgate.limiter.spec import CALENDARS, FAIL_MODES, KINDS, RESERVED_UNITS, UNITS, LimitSpec

__all__ = [
    "CALENDARS",
    "FAIL_CLOSED_RETRY_MS",
    "FAIL_MODES",
    "KINDS",
    "LOCAL_STORE",
    "RESERVED_UNITS",
    "UNITS",
    "Consumed",
    "Decision",
    "Extension",
    "KeyBuilder",
    "Lease",
    "LimitSpec",
    "LimitState",
    "Limiter",
    "LimiterStats",
    "Reservation",
    "SettledLimit",
    "Settlement",
    "build_engine",
    "build_limiter",
    "encode_value",
    "tenant_key_pattern",
]
