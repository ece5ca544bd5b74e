"""When a service is wanted: pure functions of its policy and a moment.

Window times are wall-clock times in the policy's timezone, so a window follows daylight saving
time: ``07:00`` is 07:00 local time in winter and in summer. A window belongs to the days it lists
and opens on them at ``start``; it closes at ``end`` (exclusive) the same day, or, when ``end`` is
not after ``start``, the next morning: ``{days: fri, start: "22:00", end: "02:00"}`` is Friday's
window and runs from Friday 22:00 to Saturday 02:00, whether or not Saturday is listed (and it does
not open on Saturday night unless Saturday is listed). ``end: "24:00"`` is the midnight ending the day.

Around a DST change a window covers the wall-clock times it names: a time skipped by the spring
change never occurs, so a window lying wholly in the skipped hour does not open that day; a time
repeated by the autumn change occurs twice, and the window is open both times.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from wakegrid.model import WEEKDAYS, Policy, Window


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def window_open(window: Window, tz: str | ZoneInfo, at: datetime) -> bool:
    """Whether ``window`` (wall-clock times in ``tz``) is open at the aware moment ``at``."""
    if at.tzinfo is None:
        raise ValueError("window_open needs an aware datetime (a moment, not a wall-clock time)")
    local = at.astimezone(tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz))
    now = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    start, end = _minutes(window.start), _minutes(window.end)
    today = WEEKDAYS[local.weekday()]
    if start < end:
        return today in window.days and start <= now < end
    yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
    return (today in window.days and now >= start) or (yesterday in window.days and now < end)


def scheduled_open(policy: Policy, at: datetime) -> bool:
    """Whether the policy wants its service up at ``at`` by the clock alone.

    ``always_on``: always; ``scheduled``: while one of its windows is open; ``on_demand``: never
    (it is woken by requests, not by the clock).
    """
    if policy.mode == "always_on":
        return True
    if policy.mode == "on_demand":
        return False
    if policy.timezone is None or not policy.windows:
        raise ValueError("a scheduled policy needs its timezone and windows (the fleet model checks both)")
    zone = ZoneInfo(policy.timezone)
    return any(window_open(window, zone, at) for window in policy.windows)
