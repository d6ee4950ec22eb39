"""Sizes, durations and moments in the units people read: one way for the admin and the CLI."""

import random
from datetime import datetime, timedelta

from django.utils import timezone


def local_time(moment: datetime) -> str:
    """``2026-11-26 20:30:54`` in the current time zone."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(moment: datetime | None) -> str | None:
    """ISO 8601, as JSON carries moments (None stays None)."""
    return moment.isoformat() if moment else None


def human_seconds(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``, ``3 d 04 h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def human_duration(duration: timedelta) -> str:
    return human_seconds(duration.total_seconds())


def human_bytes(size: float) -> str:
    """``512 B``, ``1.5 KiB``, ``12.3 MiB``, ``2.0 GiB``: binary units, as engines report."""
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def backoff(failures: int, base: float, most: float, factor: float = 2.0, jitter: float = 0.0):
    """Seconds to wait after ``failures`` failures in a row (1 on): ``base``, ``factor`` times
    longer after each further one, at most ``most``; of which a random part up to ``jitter``
    (a fraction) is taken off, so that many waiting at once do not all come back together."""
    delay = min(most, base * factor ** (failures - 1))
    return delay * (1 - jitter * random.random())
