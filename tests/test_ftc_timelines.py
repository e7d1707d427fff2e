"""FTC rule as timelines: the cycle runs at 06:00 on successive days over weeks of simulated time; at each T the test
checks every lifecycle event of that run (notices, consents, cancellations, refunds, emails, exceptions, shipments).

A run with no line in the expected log must have produced no event at all: each timeline is the whole story. Runs
happen every few days, on every day of an expected event and on the day before it (nothing happens early).
Channel US_WEB applies the FTC rule and draws from WH_PDX; the order has one line of SKU-T, quantity 1.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from backorders import cycle
from backorders.rules import load_rules
from tests.conftest import order_message, table_rows, utc

CHANNELS = """
defaults: {backorder_exception_days: 200}
channels:
  US_WEB: {sources: [WH_PDX], ftc_rule: true}
"""
PAYMENTS = "defaults: {reauth_interval_days: 7, authorization_validity_days: 7}\n"


@pytest.fixture
def rules(tmp_path):
    (tmp_path / "channels.yaml").write_text(CHANNELS)
    (tmp_path / "payment_methods.yaml").write_text(PAYMENTS)
    return load_rules(tmp_path)


def _d(v) -> str:
    return "none" if v is None else v.astimezone(timezone.utc).strftime("%m-%d")


def events_at(url: str, t: datetime) -> list[str]:
    """Every lifecycle event the run at T wrote, as short sorted texts."""
    q = lambda sql: table_rows(url, sql.replace("%(t)s", f"'{t.isoformat()}'::timestamptz"))  # noqa: E731
    out = []
    for kind, revised, deadline in q("SELECT kind, revised_ship_by, consent_deadline FROM oms.delay_notices "
                                     "WHERE sent_at = %(t)s"):
        out.append(f"{kind} notice revised {_d(revised)} consent by {_d(deadline)}")
    for (consent,) in q("SELECT consent FROM oms.delay_notices WHERE decided_at = %(t)s"):
        out.append(f"consent {consent}")
    for kind, qty, due in q("SELECT kind, quantity, refund_due_at FROM oms.line_cancellations WHERE run_at = %(t)s"):
        out.append(f"cancel {kind} {qty} refund due {_d(due)}")
    for (kind,) in q("SELECT kind FROM oms.notifications WHERE created_at = %(t)s"):
        out.append(f"email {kind}")
    for (kind,) in q("SELECT kind FROM oms.exceptions WHERE opened_at = %(t)s"):
        out.append(f"open {kind}")
    for (kind,) in q("SELECT kind FROM oms.exceptions WHERE closed_at = %(t)s"):
        out.append(f"close {kind}")
    for (n,) in q("SELECT count(*) FROM oms.shipment_requests WHERE requested_at = %(t)s"):
        out += ["shipment requested"] * n
    for (n,) in q("SELECT count(*) FROM oms.shipment_requests WHERE shipped_run_at = %(t)s"):
        out += ["shipped"] * n
    return sorted(out)


class Timeline:
    """Runs the cycle daily at 06:00 UTC from start to end (inclusive) and compares each run's events with the log."""

    def __init__(self, url, landing, rules, lead_days: int | None, origin: str = "2026-03-02T05:00:00Z",
                 order_id: str = "F1", lines=(("SKU-T", 1, None),)):
        self.url, self.landing, self.rules = url, landing, rules
        landing.catalog([("SKU-T", None, lead_days), ("SKU-U", None, lead_days)])
        landing.stock([("WH_PDX", "SKU-T", 0)], "2026-03-01T00:00:00Z")
        landing.message(order_message(order_id, origin=origin.replace("Z", "+00:00"), lines=list(lines)), origin)

    def run(self, expected: dict[str, list[str]], start: str = "03-02", end: str = "05-06",
            actions: dict[str, callable] | None = None, every: int = 7) -> dict[str, list[str]]:
        """Run at 06:00 on every `every`-th day from start to end, on each day of the log and of an action, and on the
        day before each of them (so that each event is shown to happen on its day, not earlier)."""
        actions = actions or {}
        first = utc(f"2026-{start}T06:00:00Z")
        last = utc(f"2026-{end}T06:00:00Z")
        days = {first + timedelta(days=n) for n in range(0, (last - first).days + 1, every)} | {last}
        for key in [*expected, *actions]:
            day = utc(f"2026-{key}T06:00:00Z")
            days |= {day, day - timedelta(days=1)}
        got = {}
        for t in sorted(d for d in days if first <= d <= last):
            day = t.strftime("%m-%d")
            if day in actions:
                actions[day]()
            cycle.run_cycle(self.url, t, rules=self.rules)
            ev = events_at(self.url, t)
            if ev:
                got[day] = ev
        assert got == {k: sorted(v) for k, v in expected.items()}
        return got

    def order(self, order_id: str = "F1") -> tuple:
        return table_rows(self.url, "SELECT ftc_status, consent, revised_ship_by, cancel_reason, refund_due_at, "
                                    f"status FROM oms.orders WHERE order_id = '{order_id}'")[0]


BACKORDERED = ["email BACKORDER_NOTICE"]


def test_revised_date_within_30_days_silence_is_consent_then_ships(migrated_url, landing, rules):
    """Lead 45 days: at the first run the seller learns it cannot ship by 04-01; revised date 04-16 (15 days after
    the ship-by date): silence is consent, recorded when the ship-by date passes. Stock comes, the order ships."""
    tl = Timeline(migrated_url, landing, rules, lead_days=45)
    landing.stock([("WH_PDX", "SKU-T", 1)], "2026-04-09T12:00:00Z")
    tl.run({
        "03-02": BACKORDERED + ["FIRST notice revised 04-16 consent by none", "email DELAY_OPTION_NOTICE"],
        "04-01": ["consent IMPLIED"],
        "04-10": ["shipment requested"],
        "04-12": ["shipped"],
    }, actions={"04-12": lambda: landing.confirm("SR-F1-1", "2026-04-11T15:00:00Z")}, end="04-20")
    assert tl.order()[:3] == ("CONSENT_IMPLIED", "IMPLIED", utc("2026-04-16T06:00:00Z"))
    assert tl.order()[5] == "SHIPPED"


def test_revised_date_missed_renewed_notice_silence_is_not_consent(migrated_url, landing, rules):
    """Implied consent to 04-16; no stock. A renewed notice goes out two days before 04-16; silence to it is not
    consent: at 04-16 the order is cancelled, with the refund due 7 working days later (Thu 04-16 -> Mon 04-27)."""
    tl = Timeline(migrated_url, landing, rules, lead_days=45)
    tl.run({
        "03-02": BACKORDERED + ["FIRST notice revised 04-16 consent by none", "email DELAY_OPTION_NOTICE"],
        "04-01": ["consent IMPLIED"],
        "04-14": ["RENEWED notice revised 05-29 consent by 04-16", "email RENEWED_DELAY_NOTICE",
                  "open FTC_DEADLINE"],
        "04-16": ["cancel FTC 1 refund due 04-27", "email CANCELLATION_NOTICE", "close FTC_DEADLINE"],
    }, end="05-04")
    status, consent, revised, reason, refund, order_status = tl.order()
    assert (status, consent, order_status) == ("CANCELLED", "NONE", "CANCELLED")
    assert reason == "we could not ship it by 2026-04-16 and did not receive your agreement to the delay"
    assert refund == utc("2026-04-27T06:00:00Z")


def test_revised_date_exactly_30_days_after_the_ship_by_date_is_still_implied_consent(migrated_url, landing, rules):
    """Order at 06:00 on 03-02, ship-by 04-01 06:00; lead 60 days gives 05-01 06:00: exactly 30 days after the
    ship-by date, which is within the 30 days: silence is consent, no consent deadline, no cancellation."""
    tl = Timeline(migrated_url, landing, rules, lead_days=60, origin="2026-03-02T06:00:00Z")
    landing.stock([("WH_PDX", "SKU-T", 1)], "2026-04-20T00:00:00Z")
    tl.run({
        "03-02": BACKORDERED + ["FIRST notice revised 05-01 consent by none", "email DELAY_OPTION_NOTICE"],
        "04-01": ["consent IMPLIED"],
        "04-20": ["shipment requested"],
        "04-22": ["shipped"],
    }, actions={"04-22": lambda: landing.confirm("SR-F1-1", "2026-04-21T09:00:00Z")}, end="05-03")


def test_revised_date_31_days_later_without_consent_is_cancelled_at_the_end_of_the_30_days(
        migrated_url, landing, rules):
    """Lead 61 days: 05-02 is more than 30 days after the ship-by date: silence is not consent. The FTC_DEADLINE
    exception warns two days ahead; at 05-01 06:00 (ship-by + 30 days) the order is cancelled: refund due
    Fri 05-01 + 7 working days = Tue 05-12."""
    tl = Timeline(migrated_url, landing, rules, lead_days=61, origin="2026-03-02T06:00:00Z")
    tl.run({
        "03-02": BACKORDERED + ["FIRST notice revised 05-02 consent by 05-01", "email DELAY_OPTION_NOTICE"],
        "04-29": ["open FTC_DEADLINE"],
        "05-01": ["cancel FTC 1 refund due 05-12", "email CANCELLATION_NOTICE", "close FTC_DEADLINE"],
    })
    assert tl.order()[:2] == ("CANCELLED", "NONE")
    body = table_rows(migrated_url, "SELECT body FROM oms.notifications WHERE kind = 'DELAY_OPTION_NOTICE'")[0][0]
    assert "please tell us by 2026-05-01" in body and "2026-05-02" in body


def test_express_consent_within_the_30_days_keeps_the_order_until_it_ships(migrated_url, landing, rules):
    tl = Timeline(migrated_url, landing, rules, lead_days=61, origin="2026-03-02T06:00:00Z")
    landing.response("F1", "consent", "2026-04-20T10:00:00Z")
    landing.stock([("WH_PDX", "SKU-T", 1)], "2026-04-27T12:00:00Z")
    tl.run({
        "03-02": BACKORDERED + ["FIRST notice revised 05-02 consent by 05-01", "email DELAY_OPTION_NOTICE"],
        "04-21": ["consent EXPRESS"],
        "04-28": ["shipment requested"],
        # the deadline is now the revised date 05-02; the order is allocated but not shipped two days before it
        "04-30": ["open FTC_DEADLINE"],
        "05-01": ["shipped", "close FTC_DEADLINE"],
    }, actions={"05-01": lambda: landing.confirm("SR-F1-1", "2026-04-30T18:00:00Z")})
    assert tl.order()[:3] == ("CONSENT_EXPRESS", "EXPRESS", utc("2026-05-02T06:00:00Z"))
    assert table_rows(migrated_url, "SELECT responded_at FROM oms.delay_notices") == [(utc("2026-04-20T10:00:00Z"),)]


def test_consent_given_after_the_deadline_does_not_save_the_order(migrated_url, landing, rules):
    """Ship-by 04-01 05:00, consent deadline 05-01 05:00. The buyer consents at 05:30, before the 06:00 run: too
    late, the order is cancelled and the consent is not recorded."""
    tl = Timeline(migrated_url, landing, rules, lead_days=61)
    landing.response("F1", "consent", "2026-05-01T05:30:00Z")
    tl.run({
        "03-02": BACKORDERED + ["FIRST notice revised 05-02 consent by 05-01", "email DELAY_OPTION_NOTICE"],
        "04-29": ["open FTC_DEADLINE"],
        "05-01": ["cancel FTC 1 refund due 05-12", "email CANCELLATION_NOTICE", "close FTC_DEADLINE"],
    })
    assert tl.order()[:2] == ("CANCELLED", "NONE")


def test_consent_given_in_time_but_received_after_the_deadline_counts(migrated_url, landing, rules):
    """The buyer consents at 04:59, one minute before the deadline; it reaches us at 05:30, before the 06:00 run:
    it counts (the time given, not the time received). Stock comes the same morning; the order ships."""
    tl = Timeline(migrated_url, landing, rules, lead_days=61)
    landing.response("F1", "consent", "2026-05-01T04:59:00Z", received_at="2026-05-01T05:30:00Z")
    landing.stock([("WH_PDX", "SKU-T", 1)], "2026-05-01T05:45:00Z")
    tl.run({
        "03-02": BACKORDERED + ["FIRST notice revised 05-02 consent by 05-01", "email DELAY_OPTION_NOTICE"],
        "04-29": ["open FTC_DEADLINE"],
        # consent moves the deadline to the revised date 05-02 06:00: a new FTC_DEADLINE for it (allocated, not shipped)
        "05-01": ["consent EXPRESS", "shipment requested", "close FTC_DEADLINE", "open FTC_DEADLINE"],
        "05-02": ["shipped", "close FTC_DEADLINE"],
    }, actions={"05-02": lambda: landing.confirm("SR-F1-1", "2026-05-01T20:00:00Z")})
    assert tl.order()[:2] == ("CONSENT_EXPRESS", "EXPRESS")


def test_no_restock_date_notice_says_none_and_the_order_is_cancelled_after_30_days(migrated_url, landing, rules):
    """Unknown restock lead time: the notice goes out two days before the ship-by date (04-01 05:00) without a
    revised date; silence is not consent; cancelled at ship-by + 30 days."""
    tl = Timeline(migrated_url, landing, rules, lead_days=None)
    tl.run({
        "03-02": BACKORDERED,
        "03-30": ["FIRST notice revised none consent by 05-01", "email DELAY_OPTION_NOTICE"],
        "04-29": ["open FTC_DEADLINE"],
        "05-01": ["cancel FTC 1 refund due 05-12", "email CANCELLATION_NOTICE", "close FTC_DEADLINE"],
    })
    body = table_rows(migrated_url, "SELECT body FROM oms.notifications WHERE kind = 'DELAY_OPTION_NOTICE'")[0][0]
    assert "We cannot tell you yet when we will be able to ship them" in body
    assert tl.order()[2] is None


def test_shipment_confirmed_on_the_last_day_is_not_cancelled(migrated_url, landing, rules):
    """Indefinite delay, no consent. Stock comes on 04-29; the shipment is handed to the carrier at 04:00 on 05-01,
    one hour before the end of the 30 days, and confirmed before the 06:00 run: shipped in time, no cancellation."""
    tl = Timeline(migrated_url, landing, rules, lead_days=None)
    landing.stock([("WH_PDX", "SKU-T", 1)], "2026-04-29T12:00:00Z")
    tl.run({
        "03-02": BACKORDERED,
        "03-30": ["FIRST notice revised none consent by 05-01", "email DELAY_OPTION_NOTICE"],
        "04-29": ["open FTC_DEADLINE"],
        "04-30": ["shipment requested"],
        "05-01": ["shipped", "close FTC_DEADLINE"],
    }, actions={"05-01": lambda: landing.confirm("SR-F1-1", "2026-05-01T04:00:00Z", "2026-05-01T04:30:00Z")})
    assert table_rows(migrated_url, "SELECT count(*) FROM oms.line_cancellations") == [(0,)]
    assert tl.order()[5] == "SHIPPED"


def test_buyer_cancellation_is_honoured_and_allocated_quantity_goes_to_support(migrated_url, landing, rules):
    """Two lines: SKU-U is allocated on 03-02 (not yet shipped), SKU-T is backordered with a notice. The buyer
    cancels on 03-10: the backordered line is cancelled at the next run (refund due Wed 03-11 + 7 working days =
    Fri 03-20); the allocated one cannot be taken back by the pipeline: a CANCEL_REQUEST_ALLOCATED exception asks
    support to stop it, and closes when the shipment is resolved (here: it shipped)."""
    tl = Timeline(migrated_url, landing, rules, lead_days=61, lines=(("SKU-T", 1, None), ("SKU-U", 2, None)))
    landing.stock([("WH_PDX", "SKU-U", 2)], "2026-03-01T00:00:00Z")
    landing.response("F1", "cancel", "2026-03-10T09:00:00Z")
    tl.run({
        "03-02": BACKORDERED + ["FIRST notice revised 05-02 consent by 05-01", "email DELAY_OPTION_NOTICE",
                                "shipment requested"],
        "03-11": ["cancel CUSTOMER 1 refund due 03-20", "email CANCELLATION_NOTICE", "open CANCEL_REQUEST_ALLOCATED"],
        "03-13": ["shipped", "close CANCEL_REQUEST_ALLOCATED"],
    }, actions={"03-13": lambda: landing.confirm("SR-F1-1", "2026-03-12T10:00:00Z")}, end="03-22")
    status, consent, revised, reason, refund, order_status = tl.order()
    assert (status, reason, refund) == ("CANCELLED_BY_BUYER", "cancelled at your request", utc("2026-03-20T06:00:00Z"))
    body = table_rows(migrated_url, "SELECT body FROM oms.notifications WHERE kind = 'CANCELLATION_NOTICE'")[0][0]
    assert "cancelled at your request" in body


def test_renewed_notice_with_express_consent_waits_for_the_new_date(migrated_url, landing, rules):
    """Implied consent to 04-16; renewed notice on 04-14 (new date 05-29, answer needed by 04-16); the buyer agrees
    on 04-15: the order stays and ships when stock comes."""
    tl = Timeline(migrated_url, landing, rules, lead_days=45)
    landing.response("F1", "consent", "2026-04-15T08:00:00Z")
    landing.stock([("WH_PDX", "SKU-T", 1)], "2026-04-24T00:00:00Z")
    tl.run({
        "03-02": BACKORDERED + ["FIRST notice revised 04-16 consent by none", "email DELAY_OPTION_NOTICE"],
        "04-01": ["consent IMPLIED"],
        "04-14": ["RENEWED notice revised 05-29 consent by 04-16", "email RENEWED_DELAY_NOTICE",
                  "open FTC_DEADLINE"],
        "04-16": ["consent EXPRESS", "close FTC_DEADLINE"],
        "04-24": ["shipment requested"],
    }, end="04-26")
    assert tl.order()[:3] == ("CONSENT_EXPRESS", "EXPRESS", utc("2026-05-29T06:00:00Z"))
