"""Time as the project writes and reads it: UTC stamps in manifests, records
and rules, the request's "now" (embargoes), and publication dates as days
since 1970-01-01 (recency, days apart)."""

from __future__ import annotations

import calendar
import datetime as dt
import time
from collections.abc import Sequence

import numpy as np

STAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""UTC, to the second: ``built_at`` of manifests, ``created_at`` of rules, measurement records."""
EPOCH = dt.date(1970, 1, 1)


def utc_stamp(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (default: now) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return time.strftime(STAMP_FORMAT, time.gmtime(seconds))


def parse_stamp(stamp: str) -> float:
    """The seconds since the epoch of a :func:`utc_stamp`."""
    return float(calendar.timegm(time.strptime(stamp, STAMP_FORMAT)))


def now_iso() -> str:
    """Now, in UTC, as ISO 8601 to the second without an offset (how embargoes compare)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def today() -> float:
    """Days since 1970-01-01 of today's date."""
    return float((dt.date.today() - EPOCH).days)


def epoch_days(published: Sequence[str | None]) -> np.ndarray:
    """Days since 1970-01-01 of each publication date (NaN when unknown or unreadable)."""
    out = np.full(len(published), np.nan, dtype=np.float64)
    for row, value in enumerate(published):
        if value:
            try:
                day = dt.date.fromisoformat(value[:10])
            except ValueError:
                continue
            out[row] = (day - EPOCH).days
    return out
