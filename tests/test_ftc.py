"""The FTC rule's date logic (backorders.ftc): working days, revised dates, consent windows; pure, no database."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from backorders import ftc

UTC = timezone.utc


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC) if "+" not in s else datetime.fromisoformat(s)


@pytest.mark.parametrize("start, days, expected", [
    ("2026-03-02T06:00", 7, "2026-03-11T06:00"),    # Monday -> Wednesday of the next week
    ("2026-03-06T06:00", 1, "2026-03-09T06:00"),    # Friday + 1 -> Monday
    ("2026-03-07T06:00", 1, "2026-03-09T06:00"),    # Saturday + 1 -> Monday
    ("2026-03-08T06:00", 7, "2026-03-17T06:00"),    # Sunday + 7 -> Tuesday of the week after next
    ("2026-05-01T06:00", 7, "2026-05-12T06:00"),    # Friday + 7 -> Tuesday
    ("2026-03-04T06:00", 0, "2026-03-04T06:00"),
])
def test_add_working_days(start, days, expected):
    assert ftc.add_working_days(at(start), days) == at(expected)


def test_working_days_follow_the_channel_time_zone():
    # Saturday 02:00 UTC is still Friday 21:00 in New York: one working day later is Monday 21:00 there, which
    # is 01:00 UTC on Tuesday since daylight saving time began on Sunday 03-08 (the local time of day is kept)
    t = at("2026-03-07T02:00")
    assert t.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York")).weekday() == 4
    assert ftc.add_working_days(t, 1, "America/New_York") == at("2026-03-10T01:00")
    assert ftc.add_working_days(t, 1, "UTC") == at("2026-03-09T02:00")


def test_working_days_refuse_nonsense():
    with pytest.raises(ValueError, match="0 or more"):
        ftc.add_working_days(at("2026-03-02T00:00"), -1)
    with pytest.raises(ValueError, match="aware"):
        ftc.add_working_days(datetime(2026, 3, 2), 1)


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
       st.integers(min_value=1, max_value=40))
def test_working_days_land_on_a_weekday_and_count_exactly(t, n):
    out = ftc.add_working_days(t, n)
    assert out.weekday() < 5 and out.time() == t.time()
    weekdays = sum(1 for k in range(1, (out.date() - t.date()).days + 1)
                   if (t.date() + timedelta(days=k)).weekday() < 5)
    assert weekdays == n


def test_refund_due_is_seven_working_days():
    assert ftc.refund_due(at("2026-04-16T06:00")) == at("2026-04-27T06:00")


def test_first_notice_is_due_when_the_lead_time_says_the_date_will_be_missed_or_the_date_is_near():
    ship_by = at("2026-04-01T05:00")
    assert ftc.first_notice_due(at("2026-03-02T06:00"), ship_by, 45)            # 04-16 > 04-01: known now
    assert not ftc.first_notice_due(at("2026-03-02T06:00"), ship_by, 20)        # expected in time
    assert not ftc.first_notice_due(at("2026-03-02T06:00"), ship_by, None)      # unknown: wait
    assert not ftc.first_notice_due(at("2026-03-30T04:59"), ship_by, None)
    assert ftc.first_notice_due(at("2026-03-30T05:00"), ship_by, None)          # two days before
    assert ftc.first_notice_due(at("2026-04-02T06:00"), ship_by, 1)             # late: send anyway


def test_renewed_notice_is_due_two_days_before_the_revised_date_only():
    revised = at("2026-04-16T06:00")
    assert not ftc.renewed_notice_due(at("2026-04-14T05:59"), revised)
    assert ftc.renewed_notice_due(at("2026-04-14T06:00"), revised)
    assert not ftc.renewed_notice_due(at("2026-04-30T06:00"), None)


def test_revised_date_comes_from_the_lead_time_and_is_never_too_close():
    ship_by = at("2026-04-01T05:00")
    assert ftc.revised_date(at("2026-03-02T06:00"), 45, ship_by) == at("2026-04-16T06:00")
    assert ftc.revised_date(at("2026-03-30T06:00"), None, ship_by) is None
    # stock due tomorrow: the revised date is still MIN_DELAY after the date it replaces
    assert ftc.revised_date(at("2026-03-30T06:00"), 1, ship_by) == ship_by + ftc.MIN_DELAY


@pytest.mark.parametrize("revised, implied", [
    ("2026-04-16T06:00", True),
    ("2026-05-01T05:00", True),          # exactly 30 days after: within
    ("2026-05-01T05:00:01", False),      # one second more: not
    (None, False),                       # indefinite
])
def test_silence_is_consent_only_within_30_days(revised, implied):
    ship_by = at("2026-04-01T05:00")
    r = at(revised) if revised else None
    assert ftc.silence_is_consent(ship_by, r) is implied
    assert ftc.consent_deadline("FIRST", ship_by, r) == (None if implied else at("2026-05-01T05:00"))


def test_renewed_notice_deadline_is_the_replaced_date():
    ship_by, replaced = at("2026-04-01T05:00"), at("2026-04-16T06:00")
    assert ftc.consent_deadline("RENEWED", ship_by, at("2026-05-29T06:00"), replaced) == replaced
    assert ftc.consent_deadline("RENEWED", ship_by, None, replaced) == replaced
    with pytest.raises(ValueError):
        ftc.consent_deadline("RENEWED", ship_by, None)
    with pytest.raises(ValueError, match="FIRST or RENEWED"):
        ftc.consent_deadline("THIRD", ship_by, None)


def test_consent_in_time():
    sent, deadline = at("2026-03-02T06:00"), at("2026-05-01T05:00")
    assert ftc.consent_in_time(at("2026-05-01T05:00"), sent, deadline)        # at the deadline: in time
    assert not ftc.consent_in_time(at("2026-05-01T05:30"), sent, deadline)
    assert not ftc.consent_in_time(at("2026-03-01T06:00"), sent, deadline)    # before the notice
    assert ftc.consent_in_time(at("2026-06-01T00:00"), sent, None)
