"""Pure date logic of the FTC Mail, Internet, or Telephone Order Merchandise Rule (16 CFR 435): working days,
revised ship-by dates, consent windows. No database, no clock: every function takes the run time T."""
from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

#: "within 30 days after the original ship-by date" (435.2(b)(1)(ii)) and the 30 days after it in which an order
#: with a longer or indefinite delay must ship or be expressly consented to (435.2(b)(1)(iii)).
CONSENT_WINDOW = timedelta(days=30)
#: a notice is sent when the ship-by (or revised) date is this close and the order still has open quantity: runs are
#: three times a day, so two days leave several runs to send it *before* the date, as the rule requires.
NOTICE_MARGIN = timedelta(days=2)
#: a revised date is at least this long after the date it replaces, so that a renewed notice is not due at once.
MIN_DELAY = NOTICE_MARGIN + timedelta(days=1)
#: refunds for cash, checks and third-party credit cards: within 7 working days (435.1(c)).
REFUND_WORKING_DAYS = 7


def add_working_days(t: datetime, days: int, timezone: str = "UTC") -> datetime:
    """t plus `days` working days (Monday to Friday in the time zone), keeping the time of day.

    Saturday or Sunday plus one working day is the next Monday; Friday plus one is Monday.
    """
    if days < 0:
        raise ValueError(f"working days: expected 0 or more, got {days}")
    if t.tzinfo is None:
        raise ValueError("working days: an aware datetime is required")
    local = t.astimezone(ZoneInfo(timezone))
    counted = 0
    day = local.date()
    while counted < days:
        day += timedelta(days=1)
        if day.weekday() < 5:
            counted += 1
    out = datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=ZoneInfo(timezone))
    return out.astimezone(t.tzinfo)


def refund_due(t: datetime, timezone: str = "UTC") -> datetime:
    """When the refund of a cancellation decided at T is due: T plus 7 working days."""
    return add_working_days(t, REFUND_WORKING_DAYS, timezone)


def expected_date(t: datetime, lead_days: int | None) -> datetime | None:
    """When the stock is expected: T plus the catalog's restock lead time; None when the lead time is unknown."""
    if lead_days is None:
        return None
    return t + timedelta(days=int(lead_days))


def first_notice_due(t: datetime, ship_by: datetime, lead_days: int | None) -> bool:
    """Whether an order with open quantity at T needs its delay option notice now: the ship-by date is near (within
    NOTICE_MARGIN, or passed), or the restock lead time already says it will be missed (the seller "learns" it)."""
    if t >= ship_by - NOTICE_MARGIN:
        return True
    expected = expected_date(t, lead_days)
    return expected is not None and expected > ship_by


def renewed_notice_due(t: datetime, revised: datetime | None) -> bool:
    """Whether a renewed notice is due at T for an order still open under a definite revised date: the revised date
    is near (within NOTICE_MARGIN) or passed. (The lead time counts from T, so it is not used here: it would move the
    expected date every day.)"""
    return revised is not None and t >= revised - NOTICE_MARGIN


def revised_date(t: datetime, lead_days: int | None, replaced: datetime) -> datetime | None:
    """The revised ship-by date a notice at T gives: T plus the restock lead time, at least MIN_DELAY after the date
    it replaces; None (the seller cannot give one) when the lead time is unknown."""
    expected = expected_date(t, lead_days)
    if expected is None:
        return None
    return max(expected, replaced + MIN_DELAY)


def silence_is_consent(original_ship_by: datetime, revised: datetime | None) -> bool:
    """First notice only: silence is consent when the revised date is definite and within 30 days after the
    original ship-by date (exactly 30 days counts as within)."""
    return revised is not None and revised <= original_ship_by + CONSENT_WINDOW


def consent_deadline(kind: str, original_ship_by: datetime, revised: datetime | None,
                     replaced: datetime | None = None) -> datetime | None:
    """By when express consent must be given, or the order is cancelled; None where silence is consent.

    FIRST: None if silence is consent, else the end of the 30 days after the original ship-by date.
    RENEWED: silence is never consent; the deadline is the revised date being replaced (435.2(b)(2)).
    """
    if kind == "FIRST":
        return None if silence_is_consent(original_ship_by, revised) else original_ship_by + CONSENT_WINDOW
    if kind == "RENEWED":
        if replaced is None:
            raise ValueError("a renewed notice replaces a revised date")
        return replaced
    raise ValueError(f"notice kind: expected FIRST or RENEWED, got {kind!r}")


def consent_in_time(responded_at: datetime, notice_sent_at: datetime, deadline: datetime | None) -> bool:
    """Express consent counts when given after the notice was sent and no later than its consent deadline."""
    return responded_at >= notice_sent_at and (deadline is None or responded_at <= deadline)
