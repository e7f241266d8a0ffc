"""Usage metering: one record per request, an exact ledger, queries and the admin API."""

from __future__ import annotations

from .meter import Meter
from .record import UsageRecord

__all__ = ["Meter", "UsageRecord"]
