"""The queue view's queries (backorders.queue_views) against PostgreSQL, without Airflow: filters by channel, SKU,
label, severity and age; a line's attempts; the aging histogram; the fill-rate trend; read-only connections."""
from __future__ import annotations

import psycopg2
import pytest

from backorders import cycle, db
from backorders import queue_views as qv
from tests.conftest import order_message, utc

T1 = "2026-03-02T06:00:00Z"
T2 = "2026-03-02T14:00:00Z"


@pytest.fixture
def queue_db(landing, migrated_url):
    url = migrated_url
    landing.message(order_message("Q1", origin="2026-02-20T09:00:00+00:00",
                                  lines=[("SKU-A", 2, None), ("SKU-B", 1, None)]), "2026-02-20T09:00:00Z")
    landing.message(order_message("Q2", store="US_B2B", origin="2026-03-01T20:00:00+00:00",
                                  lines=[("SKU-A", 1, None)]), "2026-03-01T20:00:00Z")
    landing.message(order_message("Q3", origin="2026-02-27T09:00:00+00:00", lines=[("TENT-2P", 3, None)]),
                    "2026-02-27T09:00:00Z")
    landing.stock([("WH_PDX", "SKU-B", 1)], "2026-03-01T00:00:00Z")
    cycle.run_cycle(url, T1)
    landing.stock([("WH_DAL", "SKU-A", 1)], "2026-03-02T10:00:00Z")      # one unit lands between the runs
    cycle.run_cycle(url, T2)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("""INSERT INTO oms.exceptions (exception_id, order_id, line_id, kind, severity, opened_at, details,
                                                   cause_key)
                       VALUES ('X-TEST-1', 'Q2', 'Q2-1', 'TEST_KIND', 'high', %s, 'test exception', 'test:Q2-1')""",
                    (utc(T1),))
    return url


def ids(page):
    return sorted(r["line_id"] for r in page.rows)


def test_allocation_queue_filters(queue_db):
    with qv.read_only(queue_db) as conn:
        everything = qv.allocation_queue(conn, qv.Filters())
        assert ids(everything) == ["Q1-1", "Q2-1", "Q3-1"]
        row = {r["line_id"]: r for r in everything.rows}
        # the oldest order got the unit that landed; it still waits for the other one
        assert (row["Q1-1"]["qty_allocated"], row["Q1-1"]["qty_backordered"]) == (1, 1)
        assert row["Q1-1"]["label"] == "BACKORDER" and row["Q1-1"]["wait_reason"]
        assert row["Q1-1"]["attempts"] == 2 and row["Q1-1"]["age_days"] == 10
        assert everything.rows[0]["line_id"] == "Q1-1"                     # oldest first
        assert everything.extra["qty_backordered"] == 1 + 1 + 3

        assert ids(qv.allocation_queue(conn, qv.Filters(channel="US_B2B"))) == ["Q2-1"]
        assert ids(qv.allocation_queue(conn, qv.Filters(sku="sku-a"))) == ["Q1-1", "Q2-1"]
        assert ids(qv.allocation_queue(conn, qv.Filters(sku="TENT-*"))) == ["Q3-1"]
        assert ids(qv.allocation_queue(conn, qv.Filters(min_age=3))) == ["Q1-1", "Q3-1"]
        assert ids(qv.allocation_queue(conn, qv.Filters(max_age=3))) == ["Q2-1", "Q3-1"]
        assert ids(qv.allocation_queue(conn, qv.Filters(label="ON HOLD"))) == []
        high = qv.allocation_queue(conn, qv.Filters(severity="high"))
        assert ids(high) == ["Q2-1"] and high.rows[0]["severity"] == "high"
        paged = qv.allocation_queue(conn, qv.Filters(page=2), page_size=2)
        assert (paged.total, paged.pages, len(paged.rows)) == (3, 2, 1)


def test_filters_from_query_parameters_ignore_what_they_do_not_know():
    f = qv.Filters.from_params({"channel": " US_WEB ", "sku": "", "severity": "HIGH", "label": "nonsense",
                                "min_age": "2.5", "max_age": "x", "page": "-3"})
    assert (f.channel, f.sku, f.severity, f.label, f.min_age, f.max_age, f.page) == \
        ("US_WEB", None, "high", None, 2.5, None, 1)
    assert f.as_params(page=2) == {"channel": "US_WEB", "severity": "high", "min_age": "2.5", "page": "2"}


def test_exception_queue_filters(queue_db):
    with qv.read_only(queue_db) as conn:
        mine = qv.exception_queue(conn, qv.Filters(kind="TEST_KIND"))
        assert [r["exception_id"] for r in mine.rows] == ["X-TEST-1"]
        r = mine.rows[0]
        assert (r["store"], r["sku"], float(r["age_days"])) == ("US_B2B", "SKU-A", round(8 / 24, 1))
        assert qv.exception_queue(conn, qv.Filters(kind="TEST_KIND", channel="US_WEB")).total == 0
        assert qv.exception_queue(conn, qv.Filters(kind="TEST_KIND", severity="low")).total == 0
        assert qv.exception_queue(conn, qv.Filters(kind="TEST_KIND", sku="SKU-A")).total == 1
        assert qv.exception_queue(conn, qv.Filters(kind="TEST_KIND", min_age=1)).total == 0
        assert "TEST_KIND" in qv.filter_options(conn)["kinds"]


def test_line_detail_has_the_attempts_history(queue_db):
    with qv.read_only(queue_db) as conn:
        d = qv.line_detail(conn, "Q1", "Q1-1")
        assert [(a["checked_at"], a["qty_needed"], a["qty_available"], a["qty_allocated"]) for a in d["attempts"]] == [
            (utc(T1), 2, 0, 0), (utc(T2), 2, 1, 1)]
        assert [s["source_code"] for s in d["shipments"]] == ["WH_DAL"]
        assert d["line"]["store"] == "US_WEB" and d["line"]["is_backorder"]
        assert qv.line_detail(conn, "Q1", "nope") is None


def test_aging_histogram_and_fill_rate_trend(queue_db):
    with qv.read_only(queue_db) as conn:
        hist = qv.aging_histogram(conn, qv.Filters())
        assert [b["bucket"] for b in hist] == ["0-1 d", "1-3 d", "3-7 d", "7-14 d", "14+ d"]
        assert [b["lines"] for b in hist] == [1, 0, 1, 1, 0]
        assert sum(b["lines"] for b in qv.aging_histogram(conn, qv.Filters(channel="US_B2B"))) == 1
        trend = qv.fill_rate_trend(conn)
        assert [r["run_at"] for r in trend] == [utc(T1), utc(T2)]
        # T1: 4 lines in demand, SKU-B allocated; T2: 3 waiting lines, Q1-1 got one unit
        assert trend[0]["line_fill_rate"] == pytest.approx(1 / 4, abs=1e-4)
        assert trend[1]["backorder_fill_rate"] == pytest.approx(1 / 3, abs=1e-4)
        ov = qv.overview(conn)
        assert ov["backorder_lines"] == 3 and ov["exceptions"]["high"] >= 1 and ov["as_of"] == utc(T2)
        assert ov["run_lock"] is None


def test_the_view_cannot_write(queue_db):
    with qv.read_only(queue_db) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("DELETE FROM oms.exceptions")
