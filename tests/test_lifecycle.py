"""Lifecycle against a real PostgreSQL: automatic cancellation before allocation, buyer's cancellation, exception
queue, storefront availability, and replays of runs that carry notices, consents and cancellations."""
from __future__ import annotations

import pytest

from backorders import cycle
from backorders.rules import load_rules
from tests.conftest import order_message, snapshot_oms, table_rows, utc

CHANNELS = """
defaults: {backorder_exception_days: 3}
channels:
  AUTO_WEB: {sources: [WH_A], auto_cancel_after_days: 5}
  US_WEB: {sources: [WH_A, WH_B], ftc_rule: true, backorder_exception_days: 100}
  EU_WEB: {sources: [WH_B], backorders_enabled: false, availability_message: "Lieferbar in unter {days} Tagen"}
"""


@pytest.fixture
def rules(tmp_path):
    (tmp_path / "channels.yaml").write_text(CHANNELS)
    (tmp_path / "payment_methods.yaml").write_text("defaults: {reauth_interval_days: 7}\n")
    return load_rules(tmp_path)


def day(d: str, hour: str = "06:00") -> str:
    return f"2026-{d}T{hour}:00Z"


def run(url, rules, *days):
    for d in days:
        cycle.run_cycle(url, day(d), rules=rules)


def test_auto_cancel_happens_before_allocation_and_the_stock_goes_to_the_next_order(migrated_url, landing, rules):
    url = migrated_url
    landing.message(order_message("OLD", store="AUTO_WEB", origin="2026-03-02T05:00:00+00:00",
                                  lines=[("SKU-A", 2, None)]), day("03-02", "05:00"))
    run(url, rules, "03-02")
    assert table_rows(url, "SELECT line_id, label, auto_cancel_at FROM oms.allocation_queue") == [
        ("OLD-1", "BACKORDER", utc(day("03-07", "05:00")))]
    landing.message(order_message("NEW", store="AUTO_WEB", origin="2026-03-06T05:00:00+00:00",
                                  lines=[("SKU-A", 2, None)]), day("03-06", "05:00"))
    run(url, rules, "03-06")
    # the restock lands just before the run at which OLD reaches its auto-cancel date: it goes to NEW
    landing.stock([("WH_A", "SKU-A", 2)], day("03-07", "05:30"))
    run(url, rules, "03-07")
    assert table_rows(url, "SELECT line_id, qty_allocated, qty_backordered, qty_cancelled, status "
                           "FROM oms.order_lines ORDER BY 1") == [("NEW-1", 2, 0, 0, "ALLOCATED"),
                                                                   ("OLD-1", 0, 0, 2, "CANCELLED")]
    assert table_rows(url, "SELECT line_id, run_at, quantity, kind, reason, refund_due_at FROM oms.line_cancellations") \
        == [("OLD-1", utc(day("03-07")), 2, "AUTO_CANCEL",
             "still not back in stock 5 days after your order, so we cancelled it as announced",
             utc(day("03-17")))]                                # Saturday 03-07 + 7 working days = Tuesday 03-17
    assert table_rows(url, "SELECT order_id, cancel_reason IS NOT NULL, refund_due_at, ftc_status FROM oms.orders "
                           "WHERE order_id = 'OLD'") == [("OLD", True, utc(day("03-17")), "CANCELLED")]
    (body,) = table_rows(url, "SELECT body FROM oms.notifications WHERE kind = 'CANCELLATION_NOTICE'")[0]
    assert "2 x Product SKU-A (SKU-A): still not back in stock 5 days after your order" in body
    # no attempt is logged for the cancelled line in that run: it was never in the demand
    assert table_rows(url, "SELECT count(*) FROM oms.backorder_attempts WHERE line_id = 'OLD-1' "
                           f"AND checked_at = '{day('03-07')}'") == [(0,)]
    assert table_rows(url, "SELECT line_id FROM oms.allocation_queue") == []
    # the backorder-age exception of OLD (3 days, seen by the run of 03-06) closed with the cancellation
    assert table_rows(url, "SELECT order_id, opened_at, closed_at FROM oms.exceptions WHERE kind = 'BACKORDER_AGE' "
                           "ORDER BY 1") == [("OLD", utc(day("03-06")), utc(day("03-07")))]


def test_buyer_cancels_before_the_order_is_processed(migrated_url, landing, rules):
    url = migrated_url
    landing.stock([("WH_A", "SKU-A", 5)], day("03-01"))
    landing.message(order_message("C1", store="AUTO_WEB", lines=[("SKU-A", 2, None), ("SKU-B", 1, None)]),
                    day("03-02", "03:00"))
    landing.response("C1", "Cancel ", day("03-02", "04:00"))          # case and blanks do not matter
    run(url, rules, "03-02")
    assert table_rows(url, "SELECT line_id, qty_allocated, qty_cancelled, status FROM oms.order_lines ORDER BY 1") == [
        ("C1-1", 0, 2, "CANCELLED"), ("C1-2", 0, 1, "CANCELLED")]
    assert table_rows(url, "SELECT count(*) FROM oms.shipment_requests") == [(0,)]
    assert table_rows(url, "SELECT kind FROM oms.notifications") == [("CANCELLATION_NOTICE",)]
    assert table_rows(url, "SELECT status, ftc_status FROM oms.orders") == [("CANCELLED", "CANCELLED_BY_BUYER")]
    # the next runs do nothing more
    run(url, rules, "03-03")
    assert table_rows(url, "SELECT count(*) FROM oms.line_cancellations") == [(2,)]


def test_non_ftc_channel_sends_no_delay_notice(migrated_url, landing, rules):
    url = migrated_url
    landing.message(order_message("N1", store="AUTO_WEB", lines=[("SKU-Z", 1, False)]), day("03-02", "05:00"))
    landing.message(order_message("N2", store="B2B", lines=[("SKU-Z", 1, None)]), day("03-02", "05:00"))
    run(url, rules, "03-02", "04-02", "05-10")
    assert table_rows(url, "SELECT count(*) FROM oms.delay_notices") == [(0,)]
    assert table_rows(url, "SELECT order_id, ftc_status FROM oms.orders ORDER BY 1") == [("N1", None), ("N2", None)]


def test_exception_queue_most_severe_and_oldest_first(migrated_url, landing, rules):
    url = migrated_url
    landing.message("not json at all", day("03-02", "01:00"))
    landing.message(order_message("E1", store="B2B", lines=[("SKU-E", 1, None)]), day("03-02", "02:00"))
    landing.message(order_message("E2", store="B2B", lines=[("SKU-E", 1, None)]), day("03-03", "02:00"))
    run(url, rules, "03-02", "03-03", "03-05", "03-06")
    assert table_rows(url, "SELECT kind, severity, order_id, opened_at FROM oms.exception_queue") == [
        ("BACKORDER_AGE", "high", "E1", utc(day("03-05"))),
        ("BACKORDER_AGE", "high", "E2", utc(day("03-06"))),
        ("REJECTED_MESSAGE", "medium", None, utc(day("03-02")))]
    # a re-run opens nothing twice
    run(url, rules, "03-06")
    assert table_rows(url, "SELECT count(*) FROM oms.exceptions") == [(3,)]


def test_storefront_availability(migrated_url, landing, rules):
    url = migrated_url
    landing.catalog([("SKU-IN", None, 4), ("SKU-LEAD", None, 12), ("SKU-NOBO", False, 12), ("SKU-NOLEAD", None, None),
                     ("SKU-YES", True, 6)])
    landing.stock([("WH_A", "SKU-IN", 3), ("WH_B", "SKU-IN", 1), ("WH_A", "SKU-LEAD", 0), ("WH_B", "SKU-ONLYB", 2)],
                  day("03-01"))
    landing.message(order_message("S1", store="AUTO_WEB", lines=[("SKU-IN", 3, None)]), day("03-02", "01:00"))
    run(url, rules, "03-02")
    got = {(s, k): (q, b, m) for s, k, q, b, m, t in table_rows(
        url, "SELECT store, sku, available_qty, backorderable, message, updated_at FROM oms.storefront_availability")}
    assert {t for *_, t in table_rows(url, "SELECT * FROM oms.storefront_availability")} == {utc(day("03-02"))}
    # AUTO_WEB draws from WH_A only: its 3 SKU-IN were just allocated to S1
    assert got[("AUTO_WEB", "SKU-IN")] == (0, True, "Available in under 4 days")
    assert got[("US_WEB", "SKU-IN")] == (1, True, "In stock")                      # WH_B's one
    assert got[("US_WEB", "SKU-LEAD")] == (0, True, "Available in under 12 days")
    assert got[("US_WEB", "SKU-NOBO")] == (0, False, "Out of stock")              # catalog: not backorderable
    assert got[("US_WEB", "SKU-NOLEAD")] == (0, True, "Out of stock")             # no lead time to promise
    assert got[("US_WEB", "SKU-ONLYB")] == (2, True, "In stock")
    assert got[("EU_WEB", "SKU-LEAD")] == (0, False, "Out of stock")              # channel: backorders disabled
    assert got[("EU_WEB", "SKU-IN")] == (1, False, "In stock")
    assert got[("EU_WEB", "SKU-YES")] == (0, True, "Lieferbar in unter 6 Tagen")  # catalog overrides the channel
    assert len(got) == 3 * 6                                                       # 3 channels x 6 SKUs seen
    # the allocation is shipped and stock falls to 0 at WH_B: recomputed in full at the next run
    landing.confirm("SR-S1-1", day("03-02", "10:00"))
    landing.stock([("WH_A", "SKU-IN", 0), ("WH_B", "SKU-IN", 0)], day("03-02", "10:00"))
    before = snapshot_oms(url)
    run(url, rules, "03-02")
    assert snapshot_oms(url) == before
    run(url, rules, "03-03")
    assert table_rows(url, "SELECT store, message, updated_at FROM oms.storefront_availability WHERE sku = 'SKU-IN' "
                           "ORDER BY 1") == [("AUTO_WEB", "Available in under 4 days", utc(day("03-03"))),
                                             ("EU_WEB", "Out of stock", utc(day("03-03"))),
                                             ("US_WEB", "Available in under 4 days", utc(day("03-03")))]


def test_lifecycle_and_storefront_side_by_side_make_missing_channel_settings_once(migrated_url, landing, rules):
    """apply_after_publish and refresh_storefront run at the same time; in a partial run where stage_cancellations
    did not stage the channel settings, the first of them makes the table and the other waits for it and uses it."""
    from concurrent.futures import ThreadPoolExecutor

    from backorders import db, lifecycle

    url = migrated_url
    landing.stock([("WH_A", "SKU-IN", 3), ("WH_B", "SKU-B", 2)], day("03-01"))
    landing.message(order_message("S1", store="AUTO_WEB", lines=[("SKU-IN", 2, None)]), day("03-02", "01:00"))
    cycle.run_cycle(url, day("03-02"), rules=rules, keep_staging=True)
    stg = cycle.staging_schema(cycle.as_run_time(day("03-02")))
    channels = table_rows(url, f"SELECT * FROM {stg}.lifecycle_channels ORDER BY store")
    storefront = table_rows(url, "SELECT * FROM oms.storefront_availability ORDER BY store, sku")
    assert len(channels) == 3 and ("AUTO_WEB", "SKU-IN", 1) in [r[:3] for r in storefront]
    for _ in range(4):
        with db.transaction(url) as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE {stg}.lifecycle_channels")
        with ThreadPoolExecutor(max_workers=2) as pool:
            stages = [pool.submit(stage, url, day("03-02"), rules)
                      for stage in (lifecycle.apply_after_publish, lifecycle.refresh_storefront)]
            assert [f.result() is not None for f in stages] == [True, True]
        assert table_rows(url, f"SELECT * FROM {stg}.lifecycle_channels ORDER BY store") == channels
        assert table_rows(url, "SELECT * FROM oms.storefront_availability ORDER BY store, sku") == storefront


def test_runs_with_notices_consents_and_cancellations_replay_identically(migrated_url, landing, rules):
    url = migrated_url
    landing.catalog([("SKU-T", None, 61), ("SKU-V", None, 45)])
    landing.message(order_message("R1", origin="2026-03-02T05:00:00+00:00", lines=[("SKU-T", 1, None)]),
                    day("03-02", "05:00"))
    landing.message(order_message("R2", origin="2026-03-02T05:00:00+00:00", lines=[("SKU-V", 2, None)]),
                    day("03-02", "05:00"))
    landing.message(order_message("R3", store="AUTO_WEB", lines=[("SKU-V", 1, None)]), day("03-02", "05:00"))
    landing.response("R1", "consent", day("04-10", "10:00"))
    days = ["03-02", "03-10", "04-01", "04-11", "04-14", "04-16", "04-30", "05-01"]
    run(url, rules, *days)
    final = snapshot_oms(url)
    assert table_rows(url, "SELECT order_id, ftc_status FROM oms.orders ORDER BY 1") == [
        ("R1", "RENEWED_NOTICE_SENT"), ("R2", "CANCELLED"), ("R3", "CANCELLED")]
    run(url, rules, "05-01")
    assert snapshot_oms(url) == final
    # clear 04-11 and every later run, then run them again: the same tables
    cycle.run_cycle(url, day("04-11"), rules=rules, allow_rewind_later=True)
    run(url, rules, *days[days.index("04-11") + 1:])
    assert snapshot_oms(url) == final


def test_unusable_customer_responses_are_quarantined_once(migrated_url, landing, rules):
    url = migrated_url
    landing.message(order_message("Q1", store="AUTO_WEB", lines=[("SKU-Q", 1, None)]), day("03-02", "01:00"))
    landing.response("Q1", "maybe later", day("03-02", "02:00"))
    landing.response("NOPE", "cancel", day("03-02", "02:00"))
    run(url, rules, "03-02", "03-03")
    assert table_rows(url, "SELECT source, reason, run_at FROM oms.quarantine ORDER BY reason") == [
        ("landing.customer_responses", "customer response cancel for order NOPE: no such order", utc(day("03-02"))),
        ("landing.customer_responses", "customer response maybe later for order Q1: expected consent or cancel",
         utc(day("03-02")))]
    assert table_rows(url, "SELECT kind, severity, order_id, opened_at FROM oms.exceptions ORDER BY order_id") == [
        ("REJECTED_MESSAGE", "medium", "NOPE", utc(day("03-02"))),
        ("REJECTED_MESSAGE", "medium", "Q1", utc(day("03-02")))]
    assert table_rows(url, "SELECT status FROM oms.orders") == [("BACKORDERED",)]


# ----------------------------------------------------------------------------------------------- delay-notice decisions
def _decide_one_by_one(frame, t):
    """The reference: every order's notice decided on its own with the ftc module (what lifecycle did before it
    decided on columns)."""
    import pandas as pd

    from backorders import ftc

    out = []
    for order_id, g in frame.groupby("order_id", sort=True):
        first = g.iloc[0]
        ship_by = first["ship_by_date"].to_pydatetime()
        leads = g["restock_lead_days"]
        lead = None if leads.isna().any() else int(leads.max())
        if pd.isna(first["notice_kind"]):
            if not ftc.first_notice_due(t, ship_by, lead):
                continue
            kind, replaced = "FIRST", ship_by
        else:
            replaced = first["deadline"].to_pydatetime()
            if not ftc.renewed_notice_due(t, replaced):
                continue
            kind = "RENEWED"
        revised = ftc.revised_date(t, lead, replaced)
        out.append((order_id, kind, ship_by, replaced, revised, ftc.consent_deadline(kind, ship_by, revised, replaced),
                    lead, list(g["line_id"])))
    return out


def _candidate_orders():
    from datetime import timedelta

    from hypothesis import strategies as st

    t0 = utc("2026-03-10T12:00:00+00:00")
    hours = st.integers(min_value=-24 * 40, max_value=24 * 40).map(lambda h: t0 + timedelta(hours=h))
    line = st.one_of(st.none(), st.integers(min_value=0, max_value=60))
    return st.lists(st.tuples(hours, st.booleans(), hours, st.lists(line, min_size=1, max_size=4)),
                    min_size=0, max_size=25)


def test_delay_notices_decided_on_columns_equal_one_by_one():
    """Hypothesis: the column-wise decision picks exactly the orders, kinds and dates of the order-by-order one."""
    from datetime import timedelta

    import pandas as pd
    from hypothesis import given, settings

    from backorders import lifecycle

    @settings(max_examples=200, deadline=None)
    @given(_candidate_orders(), st_hours_offset())
    def check(orders, offset):
        t = utc("2026-03-10T12:00:00+00:00") + timedelta(hours=offset)
        rows = []
        for n, (ship_by, renewed, deadline, leads) in enumerate(orders):
            for k, lead in enumerate(leads):
                rows.append({"order_id": f"O{n:03d}", "store": "US_WEB", "ship_by_date": ship_by,
                             "customer_email": "a@example.com", "customer_name": None, "language": None,
                             "notice_kind": "FIRST" if renewed else None,
                             "deadline": deadline if renewed else None, "deadline_kind": "REVISED" if renewed else None,
                             "line_id": f"L{k}", "line_number": k + 1, "sku": "S", "product_name": None,
                             "qty_open": 1, "restock_lead_days": float("nan") if lead is None else float(lead)})
        frame = pd.DataFrame(rows, columns=["order_id", "store", "ship_by_date", "customer_email", "customer_name",
                                            "language", "notice_kind", "deadline", "deadline_kind", "line_id",
                                            "line_number", "sku", "product_name", "qty_open", "restock_lead_days"])
        frame["ship_by_date"] = pd.to_datetime(frame["ship_by_date"], utc=True)
        frame["deadline"] = pd.to_datetime(frame["deadline"], utc=True)
        frame["restock_lead_days"] = frame["restock_lead_days"].astype("float64")
        got = [(n["order_id"], n["kind"], n["ship_by"], n["replaced"], n["revised"], n["consent_deadline"],
                n["lead_days"], [r["line_id"] for r in n["lines"]]) for n in lifecycle._decide_notices(frame, t)]
        assert got == _decide_one_by_one(frame, t)

    check()


def st_hours_offset():
    from hypothesis import strategies as st

    return st.integers(min_value=-24 * 10, max_value=24 * 10)
