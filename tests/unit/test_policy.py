"""Schedule windows: which day a window belongs to, midnight crossing, DST (wakegrid.policy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wakegrid.model import WEEKDAYS, Policy, Window
from wakegrid.policy import scheduled_open, window_open

PARIS = ZoneInfo("Europe/Paris")


def window(days, start: str, end: str) -> Window:
    return Window.model_validate({"days": days, "start": start, "end": end})


def paris(text: str, fold: int = 0) -> datetime:
    """A Paris wall-clock time, 2026-11-27 being a Friday."""
    return datetime.fromisoformat(text).replace(tzinfo=PARIS, fold=fold)


FRIDAY_NIGHT = window("fri", "22:00", "02:00")


@pytest.mark.parametrize(
    ("at", "is_open"),
    [
        ("2026-11-27 21:59", False),  # Friday, before the start
        ("2026-11-27 22:00", True),  # Friday: start is inclusive
        ("2026-11-27 23:59", True),
        ("2026-11-28 00:00", True),  # Saturday morning still belongs to Friday's window
        ("2026-11-28 01:59", True),
        ("2026-11-28 02:00", False),  # end is exclusive
        ("2026-11-28 22:30", False),  # Saturday night: Saturday is not listed
        ("2026-11-27 01:00", False),  # Friday morning would be Thursday's window: not listed
    ],
)
def test_a_window_crossing_midnight_belongs_to_the_day_it_starts(at, is_open):
    assert window_open(FRIDAY_NIGHT, PARIS, paris(at)) is is_open


def test_a_window_ending_at_24_00_ends_at_midnight():
    evening = window("mon", "20:00", "24:00")
    assert window_open(evening, PARIS, paris("2026-11-30 23:59:59"))
    assert not window_open(evening, PARIS, paris("2026-12-01 00:00"))


def test_the_moment_is_read_in_the_policy_timezone():
    # 21:30 UTC on Friday 27 November is 22:30 in Paris (UTC+1): open.
    assert window_open(FRIDAY_NIGHT, "Europe/Paris", datetime(2026, 11, 27, 21, 30, tzinfo=UTC))
    assert not window_open(FRIDAY_NIGHT, "Europe/Paris", datetime(2026, 11, 27, 20, 30, tzinfo=UTC))


def test_a_naive_moment_is_refused():
    with pytest.raises(ValueError, match="aware"):
        window_open(FRIDAY_NIGHT, PARIS, datetime(2026, 11, 27, 22, 30))


# --------------------------------------------------------------------------- daylight saving time
# Paris: 2026-03-29 02:00 CET -> 03:00 CEST (02:xx never happens); 2026-10-25 03:00 CEST -> 02:00 CET
# (02:xx happens twice).


def test_spring_forward_windows_follow_the_wall_clock():
    sunday = window("sun", "01:00", "03:30")
    assert window_open(sunday, PARIS, datetime(2026, 3, 29, 0, 59, tzinfo=UTC))  # 01:59 CET
    assert window_open(sunday, PARIS, datetime(2026, 3, 29, 1, 0, tzinfo=UTC))  # 03:00 CEST, an instant later
    assert not window_open(sunday, PARIS, datetime(2026, 3, 29, 1, 30, tzinfo=UTC))  # 03:30 CEST
    skipped = window("sun", "02:00", "02:30")  # wholly inside the skipped hour: never open that day
    moments = [datetime(2026, 3, 28, 22, tzinfo=UTC) + timedelta(minutes=m) for m in range(6 * 60)]
    assert not any(window_open(skipped, PARIS, at) for at in moments)


def test_fall_back_windows_are_open_both_times_the_wall_clock_shows_them():
    repeated = window("sun", "02:00", "02:30")
    assert window_open(repeated, PARIS, datetime(2026, 10, 25, 0, 15, tzinfo=UTC))  # 02:15 CEST
    assert not window_open(repeated, PARIS, datetime(2026, 10, 25, 0, 45, tzinfo=UTC))  # 02:45 CEST
    assert window_open(repeated, PARIS, datetime(2026, 10, 25, 1, 15, tzinfo=UTC))  # 02:15 CET
    assert not window_open(repeated, PARIS, datetime(2026, 10, 25, 1, 30, tzinfo=UTC))  # 02:30 CET


def test_a_night_window_over_a_dst_change_still_ends_at_its_wall_clock_end():
    saturday_night = window("sat", "22:00", "06:00")
    assert window_open(saturday_night, PARIS, paris("2026-03-29 05:59"))
    assert not window_open(saturday_night, PARIS, paris("2026-03-29 06:00"))
    assert window_open(saturday_night, PARIS, paris("2026-10-25 05:59"))
    assert not window_open(saturday_night, PARIS, paris("2026-10-25 06:00"))


# --------------------------------------------------------------------------- properties

TIMES = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
DAYS = st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True)
ZONES = st.sampled_from(["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kathmandu"])
MOMENTS = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(DAYS, TIMES, TIMES, ZONES, MOMENTS)
def test_a_crossing_window_is_its_evening_plus_the_next_mornings(days, start, end, zone, at):
    """``D start-end`` with end <= start == ``D start-24:00`` or ``(D+1) 00:00-end``."""
    if end >= start:
        start, end = end, start
    if start == end:
        return
    crossing = window(days, start, end)
    evening = window(days, start, "24:00")
    next_days = [WEEKDAYS[(WEEKDAYS.index(day) + 1) % 7] for day in days]
    in_morning = end != "00:00" and window_open(window(next_days, "00:00", end), zone, at)
    assert window_open(crossing, zone, at) == (window_open(evening, zone, at) or in_morning)


@settings(max_examples=300, deadline=None)
@given(DAYS, TIMES, TIMES, ZONES, MOMENTS)
def test_a_window_is_open_only_on_its_days_or_the_morning_after(days, start, end, zone, at):
    if start == end:
        return
    if window_open(window(days, start, end), zone, at):
        local = at.astimezone(ZoneInfo(zone))
        today, yesterday = WEEKDAYS[local.weekday()], WEEKDAYS[(local.weekday() - 1) % 7]
        assert today in days or (end < start and yesterday in days)


def test_scheduled_open_by_mode():
    at = paris("2026-11-28 01:00")
    assert scheduled_open(Policy(mode="always_on"), at)
    assert not scheduled_open(Policy(mode="on_demand", idle_after=60), at)
    friday_night = {"days": "fri", "start": "22:00", "end": "02:00"}
    scheduled = Policy.model_validate({"mode": "scheduled", "timezone": "Europe/Paris", "windows": [friday_night]})
    assert scheduled_open(scheduled, at)
    assert not scheduled_open(scheduled, paris("2026-11-28 03:00"))
