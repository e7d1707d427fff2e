"""The migrations create every table, column and view of the data contract, documented, and are idempotent."""
from __future__ import annotations

from backorders import schema
from tests.conftest import table_rows

CONTRACT = {
    "landing.order_messages": "message_id received_at body",
    "landing.stock_levels": "source_code sku quantity as_of received_at",
    "landing.catalog_items": "sku backorders_allowed restock_lead_days updated_at",
    "landing.shipment_confirmations": "shipment_request_id shipped_at received_at",
    "landing.customer_responses": "order_id response responded_at received_at",
    "oms.orders": "order_id store origin_date customer_email payment_method status ship_by_date updated_at",
    "oms.order_lines": "order_id line_id line_number sku qty_ordered qty_allocated qty_shipped qty_backordered qty_held "
                       "qty_cancelled status is_backorder backorder_decided_by backordered_since auto_cancel_at updated_at",
    "oms.shipment_requests": "shipment_request_id order_id source_code requested_at status",
    "oms.shipment_request_lines": "shipment_request_id order_id line_id sku quantity",
    "oms.backorder_attempts": "order_id line_id checked_at qty_needed qty_available qty_allocated outcome",
    "oms.exceptions": "exception_id order_id line_id kind severity opened_at closed_at details",
    "oms.notifications": "notification_id idempotency_key order_id kind recipient subject body created_at status sent_at "
                         "attempts last_error",
    "oms.payment_requests": "payment_request_id idempotency_key order_id shipment_request_id kind amount currency due_at "
                            "created_at status sent_at response",
    "oms.delay_notices": "order_id kind sent_at original_ship_by revised_ship_by consent decided_at",
    "oms.storefront_availability": "store sku available_qty backorderable message updated_at",
    "oms.quarantine": "quarantine_id source source_ref received_at reason raw",
    "oms.pipeline_runs": "run_id run_at started_at finished_at status dq_results",
    "oms.allocation_queue": "order_id line_id label age_days attempts last_attempt_at auto_cancel_at",
    "oms.exception_queue": "exception_id kind severity opened_at",
}


def columns(url):
    rows = table_rows(url, "SELECT table_schema || '.' || table_name, column_name FROM information_schema.columns "
                           "WHERE table_schema IN ('landing', 'oms')")
    out: dict[str, set] = {}
    for t, c in rows:
        out.setdefault(t, set()).add(c)
    return out


def test_every_contract_table_and_column_exists(migrated_url):
    have = columns(migrated_url)
    missing = {t: sorted(set(cols.split()) - have.get(t, set())) for t, cols in CONTRACT.items()}
    assert {t: m for t, m in missing.items() if m} == {}


def test_every_table_and_view_is_documented(migrated_url):
    undocumented = table_rows(migrated_url, """
        SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('landing', 'oms') AND c.relkind IN ('r', 'v') AND obj_description(c.oid) IS NULL""")
    assert undocumented == []


def test_upgrade_is_idempotent_and_at_head(migrated_url):
    schema.upgrade(migrated_url)
    assert schema.current_revision(migrated_url) == schema.head_revision()


def test_empty_database_is_brought_up_to_date_by_the_first_run(db_url):
    from backorders import cycle

    assert schema.current_revision(db_url) is None
    cycle.run_cycle(db_url, "2026-03-02T06:00:00Z")
    assert schema.current_revision(db_url) == schema.head_revision()
    assert table_rows(db_url, "SELECT status FROM oms.pipeline_runs") == [("SUCCESS",)]


def test_exception_queue_orders_most_severe_then_oldest(migrated_url):
    from backorders import db

    with db.transaction(migrated_url) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO oms.exceptions (exception_id, kind, severity, opened_at, cause_key, closed_at) "
                        "VALUES (%s, 'K', %s, %s, %s, %s)", [
                            ("a", "low", "2026-01-01Z", "a", None), ("b", "high", "2026-01-03Z", "b", None),
                            ("c", "high", "2026-01-02Z", "c", None), ("d", "medium", "2026-01-01Z", "d", None),
                            ("e", "high", "2026-01-01Z", "e", "2026-01-04Z")])
    assert [r[0] for r in table_rows(migrated_url, "SELECT exception_id FROM oms.exception_queue")] == ["c", "b", "d", "a"]
