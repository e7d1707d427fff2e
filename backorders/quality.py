"""Data-quality gates between the stages: Great Expectations checks run as SQL on PostgreSQL, results kept and reported.

Three gates: `extract` (the staged input), `allocate` (the allocation invariants of domain.md §3) and `load` (what
publish wrote). Each check is one Great Expectations expectation on one table of the run (its batch): an
UnexpectedRowsExpectation whose SQL returns the rows that break the rule, or a column/table expectation. Everything
runs in the database; only counts and a few example rows come back.

Whether a failing check blocks the run or only warns is set in `include/rules/checks.yaml` (default per check below).
Results go to `oms.dq_results` (one row per check and run, for BI), to `oms.pipeline_runs.dq_results` (the summary),
to the task log (masked), and to a static HTML page per run (`reports/dq/<run_id>.html`, folder
`BACKORDERS_DQ_REPORT_DIR`). A blocking failure raises cycle.CheckFailed: the stages after it do not run and nothing
of the run is published (publish is one transaction and comes after the extract and allocate gates).

Great Expectations is imported inside the functions only, once per process: it takes seconds to import. A gate
costs the checks' own SQL, each query run once (see _run_gx), plus a fraction of a second of GX bookkeeping.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from backorders.masking import mask_value

log = logging.getLogger(__name__)

STAGES = ("extract", "allocate", "load")
STAGING = re.compile(r"^stg_[0-9]{8}t[0-9]{6}$")
TABLE = re.compile(r"^(\{stg\}|oms|landing)\.[a-z_]{1,63}$")
MAX_INT = 2_147_483_647


class _T:
    """Stands for the run time T in an expectation's arguments."""

    def __repr__(self) -> str:
        return "T"


T = _T()


@dataclass(frozen=True)
class ColumnsOf:
    """Stands for the column names, in order, of a table of the database (read when the checks run)."""
    schema: str
    table: str


@dataclass(frozen=True)
class Check:
    """One data-quality check.

    id:          `<stage>.<name>`, the key in checks.yaml
    description: what is expected, in words
    table:       the batch the expectation runs on: `{stg}.<table>` (the run's staging schema) or `oms.<table>`
    query:       for an UnexpectedRowsExpectation: SQL returning the failing rows ({batch}, {stg}, %(t)s). Great
                 Expectations substitutes {batch} by an aliased subquery when the query has no JOIN: write
                 `FROM (SELECT * FROM {batch}) x` there, `FROM {batch} x` in a query with a JOIN.
    expectation: otherwise a Great Expectations expectation class name and its arguments (T and ColumnsOf resolved)
    default:     block or warn when checks.yaml does not say
    """
    id: str
    description: str
    table: str
    query: str | None = None
    expectation: tuple[str, dict] | None = None
    default: str = "block"

    @property
    def stage(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def kind(self) -> str:
        if self.query is not None:
            return "rows"
        name = self.expectation[0]
        return "map" if name.startswith(("ExpectColumnValues", "ExpectCompoundColumns", "ExpectColumnValueLengths")) \
            and name != "ExpectColumnValuesToBeOfType" else "table"


# columns that identify a failing row of each table, shown with the examples of column expectations
KEYS = {
    "{stg}.new_orders": ["order_id"],
    "{stg}.new_lines": ["order_id", "line_id"],
    "{stg}.consumed": ["message_id"],
    "{stg}.quarantine": ["quarantine_id"],
    "{stg}.stock": ["source_code", "sku"],
    "{stg}.stock_intake": ["source_ref"],
    "{stg}.demand": ["order_id", "line_id"],
    "{stg}.allocations": ["order_id", "line_id", "source_code"],
    "{stg}.line_results": ["order_id", "line_id"],
}

_SINCE = ("(SELECT coalesce(max(run_at), '-infinity'::timestamptz) FROM oms.pipeline_runs "
          "WHERE run_at < %(t)s AND status = 'SUCCESS')")

CHECKS: list[Check] = [
    # ------------------------------------------------------------------------------------------ extract
    Check("extract.orders_columns", "staged new orders have the columns of oms.orders, in order (publish copies them)",
          "{stg}.new_orders", expectation=("ExpectTableColumnsToMatchOrderedList",
                                           {"column_list": ColumnsOf("oms", "orders")})),
    Check("extract.lines_columns", "staged new lines have the columns of oms.order_lines, in order",
          "{stg}.new_lines", expectation=("ExpectTableColumnsToMatchOrderedList",
                                          {"column_list": ColumnsOf("oms", "order_lines")})),
    Check("extract.quantity_type", "line quantities are integers", "{stg}.new_lines",
          expectation=("ExpectColumnValuesToBeOfType", {"column": "qty_ordered", "type_": "INTEGER"})),
    Check("extract.origin_date_type", "order dates are timestamps with a time zone", "{stg}.new_orders",
          expectation=("ExpectColumnValuesToBeOfType", {"column": "origin_date", "type_": "TIMESTAMP WITH TIME ZONE"})),
    Check("extract.order_id_unique", "each new order id once", "{stg}.new_orders",
          expectation=("ExpectColumnValuesToBeUnique", {"column": "order_id"})),
    Check("extract.orders_not_known", "new orders are not already in oms.orders", "{stg}.new_orders",
          query="SELECT n.order_id, n.message_id FROM {batch} n JOIN oms.orders o USING (order_id) ORDER BY 1"),
    Check("extract.orders_required", "new orders have an id, a store, an origin date, a customer email, content "
          "and their document", "{stg}.new_orders",
          query="SELECT n.order_id, n.message_id FROM (SELECT * FROM {batch}) n "
                "WHERE order_id IS NULL OR btrim(order_id) = '' OR store IS NULL OR btrim(store) = '' "
                "OR origin_date IS NULL OR customer_email IS NULL "
                "OR btrim(customer_email) = '' OR content_hash IS NULL OR NOT EXISTS (SELECT 1 FROM "
                "{stg}.new_order_documents d WHERE d.order_id = n.order_id AND d.raw_order IS NOT NULL) "
                "ORDER BY message_id"),
    Check("extract.origin_date_not_after_t", "order dates are not after T", "{stg}.new_orders",
          expectation=("ExpectColumnValuesToBeBetween", {"column": "origin_date", "max_value": T}), default="warn"),
    Check("extract.orders_have_lines", "every new order has at least one line", "{stg}.new_orders",
          query="SELECT o.order_id FROM (SELECT * FROM {batch}) o WHERE NOT EXISTS "
                "(SELECT 1 FROM {stg}.new_lines l WHERE l.order_id = o.order_id) ORDER BY 1"),
    Check("extract.line_id_unique", "each (order, line id) once", "{stg}.new_lines",
          expectation=("ExpectCompoundColumnsToBeUnique", {"column_list": ["order_id", "line_id"]})),
    Check("extract.line_quantity_range", "line quantities are whole numbers from 1 to 2147483647", "{stg}.new_lines",
          expectation=("ExpectColumnValuesToBeBetween", {"column": "qty_ordered", "min_value": 1, "max_value": MAX_INT})),
    Check("extract.line_sku_present", "every new line has a SKU", "{stg}.new_lines",
          expectation=("ExpectColumnValueLengthsToBeBetween", {"column": "sku", "min_value": 1})),
    Check("extract.lines_have_order", "every new line belongs to a new order", "{stg}.new_lines",
          query="SELECT l.order_id, l.line_id FROM (SELECT * FROM {batch}) l WHERE NOT EXISTS "
                "(SELECT 1 FROM {stg}.new_orders o WHERE o.order_id = l.order_id) ORDER BY 1, 2"),
    Check("extract.message_consumed_once", "every message consumed by the run once", "{stg}.consumed",
          expectation=("ExpectColumnValuesToBeUnique", {"column": "message_id"})),
    Check("extract.nothing_lost_messages",
          "nothing lost: every message received up to T is consumed (before or by this run), once; "
          "the rest is not yet due", "{stg}.consumed",
          query="SELECT 'received, not consumed' AS problem, m.message_id FROM landing.order_messages m "
                "WHERE m.received_at <= %(t)s "
                "AND NOT EXISTS (SELECT 1 FROM oms.consumed_messages c WHERE c.message_id = m.message_id) "
                "AND NOT EXISTS (SELECT 1 FROM {batch} s WHERE s.message_id = m.message_id) "
                "UNION ALL SELECT 'consumed twice', s.message_id FROM {batch} s "
                "JOIN oms.consumed_messages c USING (message_id) "
                "UNION ALL SELECT 'consumed, not received by T', s.message_id FROM {batch} s "
                "LEFT JOIN landing.order_messages m USING (message_id) "
                "WHERE m.message_id IS NULL OR m.received_at > %(t)s ORDER BY 2, 1"),
    Check("extract.message_outcomes", "each consumed message's outcome is backed: processed by a new order, "
          "quarantined by a quarantine row, duplicate of a known order", "{stg}.consumed",
          query="SELECT 'processed, no new order' AS problem, s.message_id::text AS ref FROM (SELECT * FROM {batch}) s "
                "WHERE s.outcome = 'PROCESSED' AND NOT EXISTS "
                "(SELECT 1 FROM {stg}.new_orders o WHERE o.message_id = s.message_id) "
                "UNION ALL SELECT 'new order, no processed message', o.order_id FROM {stg}.new_orders o "
                "WHERE NOT EXISTS (SELECT 1 FROM (SELECT * FROM {batch}) s WHERE s.message_id = o.message_id "
                "AND s.outcome = 'PROCESSED') "
                "UNION ALL SELECT 'quarantined, no quarantine row', s.message_id::text FROM (SELECT * FROM {batch}) s "
                "WHERE s.outcome = 'QUARANTINED' AND NOT EXISTS (SELECT 1 FROM {stg}.quarantine q "
                "WHERE q.source = 'landing.order_messages' AND q.source_ref = s.message_id::text) "
                "UNION ALL SELECT 'quarantine row, not consumed as quarantined', q.source_ref FROM {stg}.quarantine q "
                "WHERE q.source = 'landing.order_messages' AND NOT EXISTS (SELECT 1 FROM (SELECT * FROM {batch}) s "
                "WHERE s.message_id::text = q.source_ref AND s.outcome = 'QUARANTINED') "
                "UNION ALL SELECT 'duplicate of an unknown order', s.message_id::text FROM (SELECT * FROM {batch}) s "
                "WHERE s.outcome = 'DUPLICATE' AND NOT EXISTS (SELECT 1 FROM oms.orders o WHERE o.order_id = s.order_id) "
                "AND NOT EXISTS (SELECT 1 FROM {stg}.new_orders o WHERE o.order_id = s.order_id) "
                "UNION ALL SELECT 'unknown outcome', s.message_id::text FROM (SELECT * FROM {batch}) s "
                "WHERE s.outcome IS NULL OR s.outcome NOT IN ('PROCESSED', 'QUARANTINED', 'DUPLICATE') ORDER BY 1, 2"),
    Check("extract.quarantine_id_unique", "each quarantine id once", "{stg}.quarantine",
          expectation=("ExpectColumnValuesToBeUnique", {"column": "quarantine_id"})),
    Check("extract.quarantine_reason", "every quarantined row says why", "{stg}.quarantine",
          expectation=("ExpectColumnValueLengthsToBeBetween", {"column": "reason", "min_value": 1})),
    Check("extract.nothing_lost_stock",
          "nothing lost: every stock row received since the last run is valid, not yet due or quarantined",
          "{stg}.stock_intake",
          query="WITH landed AS (SELECT s.source_code, s.sku, s.quantity, s.as_of, s.received_at "
                "FROM landing.stock_levels s WHERE s.received_at <= %(t)s AND s.received_at > " + _SINCE + "), "
                "taken AS (SELECT source_code, sku, quantity, as_of, received_at FROM {batch} "
                "WHERE status IN ('VALID', 'NOT_DUE', 'QUARANTINED')) "
                "SELECT * FROM ((SELECT 'received, not accounted for' AS problem, * FROM "
                "(SELECT * FROM landed EXCEPT ALL SELECT * FROM taken) a) UNION ALL "
                "(SELECT 'accounted for, not received', * FROM (SELECT * FROM taken EXCEPT ALL SELECT * FROM landed) b)) x "
                "ORDER BY 2, 3, 5"),
    Check("extract.rejects_quarantined", "every bad stock row and unreadable file row of the window is quarantined",
          "{stg}.stock_intake",
          query="SELECT i.source_ref, i.problem FROM (SELECT * FROM {batch}) i WHERE i.status = 'QUARANTINED' AND NOT EXISTS "
                "(SELECT 1 FROM {stg}.quarantine q WHERE q.quarantine_id = i.quarantine_id) "
                "UNION ALL SELECT r.file_name || ':' || r.line_number, r.reason FROM landing.file_rejects r "
                "WHERE r.received_at <= %(t)s AND r.received_at > " + _SINCE + " AND NOT EXISTS "
                "(SELECT 1 FROM {stg}.quarantine q WHERE q.source = 'file:' || r.file_name "
                "AND q.source_ref = r.file_name || ':' || r.line_number) ORDER BY 1"),
    Check("extract.stock_not_negative", "on-hand stock is not negative", "{stg}.stock",
          expectation=("ExpectColumnValuesToBeBetween", {"column": "qty_on_hand", "min_value": 0})),
    Check("extract.stock_quantity_type", "available stock is an integer", "{stg}.stock",
          expectation=("ExpectColumnValuesToBeOfType", {"column": "qty_available", "type_": "BIGINT"})),
    Check("extract.stock_available_in_range", "available stock is between 0 and on-hand; committed and safety "
          "stock are not negative", "{stg}.stock",
          query="SELECT source_code, sku, qty_on_hand, qty_committed, qty_safety, qty_available FROM {batch} "
                "WHERE qty_available IS NULL OR qty_available < 0 OR qty_available > qty_on_hand "
                "OR qty_committed < 0 OR qty_safety < 0 ORDER BY 1, 2"),
    Check("extract.stock_key_unique", "one stock row per source and SKU", "{stg}.stock",
          expectation=("ExpectCompoundColumnsToBeUnique", {"column_list": ["source_code", "sku"]})),
    Check("extract.stock_known_sources", "stock only from sources named in channels.yaml", "{stg}.stock",
          query="SELECT source_code, sku FROM (SELECT * FROM {batch}) s WHERE NOT EXISTS "
                "(SELECT 1 FROM {stg}.sources k WHERE k.source_code = s.source_code) ORDER BY 1, 2"),
    Check("extract.stock_not_after_t", "stock levels used are dated at or before T", "{stg}.stock",
          expectation=("ExpectColumnValuesToBeBetween", {"column": "as_of", "max_value": T})),
    Check("extract.demand_positive", "every demand line needs a positive quantity", "{stg}.demand",
          expectation=("ExpectColumnValuesToBeBetween", {"column": "qty_open", "min_value": 1})),
    Check("extract.demand_unique", "each line in demand once", "{stg}.demand",
          expectation=("ExpectCompoundColumnsToBeUnique", {"column_list": ["order_id", "line_id"]})),
    Check("extract.demand_has_channel", "every demand line has a channel and a stock pool", "{stg}.demand",
          query="SELECT d.order_id, d.line_id, d.store FROM (SELECT * FROM {batch}) d WHERE d.pool IS NULL OR NOT EXISTS "
                "(SELECT 1 FROM {stg}.channels c WHERE c.store = d.store) ORDER BY 1, 2"),
    # ------------------------------------------------------------------------------------------ allocate
    Check("allocate.no_source_over_allocated", "no source is allocated more than it has available",
          "{stg}.allocations",
          query="SELECT a.source_code, a.sku, sum(a.qty) AS allocated, max(s.qty_available) AS available "
                "FROM {batch} a LEFT JOIN {stg}.stock s USING (source_code, sku) "
                "GROUP BY 1, 2 HAVING sum(a.qty) > coalesce(max(s.qty_available), 0) ORDER BY 1, 2"),
    Check("allocate.allocation_quantity_positive", "every allocation is of a positive quantity", "{stg}.allocations",
          expectation=("ExpectColumnValuesToBeBetween", {"column": "qty", "min_value": 1})),
    Check("allocate.one_result_per_line", "every demand line has exactly one result", "{stg}.demand",
          query="SELECT d.order_id, d.line_id, count(r.line_id) AS results FROM {batch} d "
                "LEFT JOIN {stg}.line_results r USING (order_id, line_id) GROUP BY 1, 2 "
                "HAVING count(r.line_id) <> 1 ORDER BY 1, 2"),
    Check("allocate.quantities_add_up",
          "per line: open = allocated + backordered + held + cancelled, none negative, allocated = its allocations",
          "{stg}.line_results",
          query="SELECT r.order_id, r.line_id, d.qty_open, r.qty_allocated, r.qty_backordered, r.qty_held, "
                "r.qty_cancelled FROM {batch} r JOIN {stg}.demand d USING (order_id, line_id) "
                "LEFT JOIN (SELECT order_id, line_id, sum(qty) AS qty FROM {stg}.allocations GROUP BY 1, 2) a "
                "USING (order_id, line_id) "
                "WHERE d.qty_open <> r.qty_allocated + r.qty_backordered + r.qty_held + r.qty_cancelled "
                "OR least(r.qty_allocated, r.qty_backordered, r.qty_held, r.qty_cancelled) < 0 "
                "OR r.qty_allocated <> coalesce(a.qty, 0) ORDER BY 1, 2"),
    Check("allocate.no_backorder_if_not_allowed", "no backorder on a line that may not wait", "{stg}.line_results",
          query="SELECT r.order_id, r.line_id FROM {batch} r JOIN {stg}.demand d USING (order_id, line_id) "
                "WHERE NOT d.backorderable AND r.qty_backordered > 0 ORDER BY 1, 2"),
    Check("allocate.no_allocation_for_cancelled_line", "no allocation for a cancelled line", "{stg}.allocations",
          query="SELECT a.order_id, a.line_id, a.qty FROM {batch} a JOIN {stg}.line_results r USING (order_id, line_id) "
                "JOIN {stg}.demand d USING (order_id, line_id) WHERE r.qty_cancelled >= d.qty_open "
                "UNION ALL SELECT a.order_id, a.line_id, a.qty FROM {batch} a "
                "JOIN oms.order_lines l USING (order_id, line_id) WHERE l.status = 'CANCELLED' ORDER BY 1, 2"),
    Check("allocate.sources_of_channel", "allocations only from the channel's sources", "{stg}.allocations",
          query="SELECT a.order_id, a.line_id, a.source_code FROM {batch} a JOIN {stg}.demand d "
                "USING (order_id, line_id) JOIN {stg}.channels c ON c.store = d.store "
                "WHERE NOT (a.source_code = ANY (c.sources)) ORDER BY 1, 2"),
    Check("allocate.shipments_within_limit", "shipment requests per order within the channel's limit",
          "{stg}.allocations",
          query="SELECT a.order_id, max(d.shipments_used) + count(DISTINCT a.source_code) AS shipments, "
                "max(c.max_shipments) AS max_shipments FROM {batch} a JOIN {stg}.demand d USING (order_id, line_id) "
                "JOIN {stg}.channels c ON c.store = d.store WHERE c.max_shipments IS NOT NULL GROUP BY a.order_id "
                "HAVING max(d.shipments_used) + count(DISTINCT a.source_code) > max(c.max_shipments) ORDER BY 1"),
    # ------------------------------------------------------------------------------------------ load
    Check("load.orders_published", "every staged new order is in oms.orders, from this run", "{stg}.new_orders",
          query="SELECT n.order_id FROM {batch} n LEFT JOIN oms.orders o USING (order_id) "
                "WHERE o.order_id IS NULL OR o.created_run_at <> %(t)s OR o.content_hash <> n.content_hash "
                "OR NOT EXISTS (SELECT 1 FROM oms.order_documents d WHERE d.order_id = n.order_id) ORDER BY 1"),
    Check("load.lines_published", "every staged new line is in oms.order_lines with its SKU and quantity",
          "{stg}.new_lines",
          query="SELECT n.order_id, n.line_id FROM {batch} n LEFT JOIN oms.order_lines o USING (order_id, line_id) "
                "WHERE o.line_id IS NULL OR o.qty_ordered <> n.qty_ordered OR o.sku <> n.sku "
                "OR o.created_run_at <> %(t)s ORDER BY 1, 2"),
    Check("load.messages_published", "every consumed message is in oms.consumed_messages with its outcome",
          "{stg}.consumed",
          query="SELECT s.message_id, s.outcome FROM {batch} s LEFT JOIN oms.consumed_messages c USING (message_id) "
                "WHERE c.message_id IS NULL OR c.run_at <> %(t)s OR c.outcome <> s.outcome ORDER BY 1"),
    Check("load.quarantine_published", "every quarantined row is in oms.quarantine", "{stg}.quarantine",
          query="SELECT q.quarantine_id, q.source, q.source_ref FROM {batch} q LEFT JOIN oms.quarantine o "
                "USING (quarantine_id) WHERE o.quarantine_id IS NULL OR o.run_at <> %(t)s ORDER BY 1"),
    Check("load.allocations_published", "every allocation is a shipment request line of this run, and nothing else",
          "{stg}.allocations",
          query="WITH staged AS (SELECT order_id, line_id, source_code, sum(qty) AS qty FROM {batch} GROUP BY 1, 2, 3), "
                # the run's requests by their index, each one's lines by key (OFFSET 0 keeps it a lookup): a join
                # would hash every request line of the history
                "published AS (SELECT l.order_id, l.line_id, r.source_code, sum(l.quantity) AS qty "
                "FROM oms.shipment_requests r CROSS JOIN LATERAL (SELECT l.order_id, l.line_id, l.quantity "
                "FROM oms.shipment_request_lines l WHERE l.shipment_request_id = r.shipment_request_id OFFSET 0) l "
                "WHERE r.requested_at = %(t)s GROUP BY 1, 2, 3) "
                "SELECT order_id, line_id, source_code, s.qty AS staged, p.qty AS published "
                "FROM staged s FULL JOIN published p USING (order_id, line_id, source_code) "
                "WHERE s.qty IS DISTINCT FROM p.qty ORDER BY 1, 2, 3"),
    Check("load.cancellations_published", "every cancelled quantity is in oms.line_cancellations of this run",
          "{stg}.line_results",
          query="SELECT r.order_id, r.line_id, r.qty_cancelled, coalesce(c.qty, 0) AS published FROM {batch} r "
                "LEFT JOIN (SELECT order_id, line_id, sum(quantity) AS qty FROM oms.line_cancellations "
                "WHERE run_at = %(t)s GROUP BY 1, 2) c USING (order_id, line_id) "
                "WHERE r.qty_cancelled > 0 AND coalesce(c.qty, 0) < r.qty_cancelled ORDER BY 1, 2"),
    Check("load.shipment_keys_consistent", "shipment request lines of this run match their request's order and "
          "their line's SKU", "oms.shipment_request_lines",
          # the run's requests, their lines and those lines' order lines read by key, as allocations_published
          query="SELECT l.shipment_request_id, l.order_id, l.line_id FROM oms.shipment_requests r "
                "CROSS JOIN LATERAL (SELECT * FROM {batch} l "
                "WHERE l.shipment_request_id = r.shipment_request_id OFFSET 0) l "
                "LEFT JOIN LATERAL (SELECT ol.line_id, ol.sku FROM oms.order_lines ol "
                "WHERE ol.order_id = l.order_id AND ol.line_id = l.line_id OFFSET 0) ol ON true "
                "WHERE r.requested_at = %(t)s AND (l.order_id <> r.order_id OR ol.line_id IS NULL OR ol.sku <> l.sku) "
                "ORDER BY 1, 3"),
    Check("load.consumed_orders_exist", "every processed or duplicate message of this run names an order in "
          "oms.orders", "oms.consumed_messages",
          query="SELECT c.message_id, c.order_id FROM (SELECT * FROM {batch}) c WHERE c.run_at = %(t)s "
                "AND c.outcome IN ('PROCESSED', 'DUPLICATE') "
                "AND NOT EXISTS (SELECT 1 FROM oms.orders o WHERE o.order_id = c.order_id) ORDER BY 1"),
    Check("load.nothing_lost", "nothing lost: every message received up to T is in oms.consumed_messages",
          "oms.consumed_messages",
          query="SELECT m.message_id, m.received_at::text AS received_at FROM landing.order_messages m "
                "WHERE m.received_at <= %(t)s AND NOT EXISTS "
                "(SELECT 1 FROM (SELECT * FROM {batch}) c WHERE c.message_id = m.message_id) ORDER BY 1"),
    Check("load.counts_match", "the run's staged counts (recorded in oms.pipeline_runs) equal the rows published",
          "oms.quarantine",
          query="SELECT figure, staged, published FROM (VALUES "
                "('orders', (SELECT count(*) FROM {stg}.new_orders), "
                "(SELECT count(*) FROM oms.orders WHERE created_run_at = %(t)s)), "
                "('order lines', (SELECT count(*) FROM {stg}.new_lines), "
                "(SELECT count(*) FROM oms.order_lines WHERE created_run_at = %(t)s)), "
                "('consumed messages', (SELECT count(*) FROM {stg}.consumed), "
                "(SELECT count(*) FROM oms.consumed_messages WHERE run_at = %(t)s)), "
                "('quarantined rows', (SELECT count(*) FROM {stg}.quarantine), "
                "(SELECT count(*) FROM {batch} WHERE run_at = %(t)s)), "
                "('shipment requests', (SELECT count(*) FROM (SELECT DISTINCT order_id, source_code "
                "FROM {stg}.allocations) a), (SELECT count(*) FROM oms.shipment_requests WHERE requested_at = %(t)s)), "
                "('shipments confirmed', (SELECT count(*) FROM {stg}.confirmations), "
                "(SELECT count(*) FROM oms.shipment_requests WHERE shipped_run_at = %(t)s))"
                ") v (figure, staged, published) WHERE staged <> published ORDER BY 1"),
    Check("load.committed_within_on_hand", "per source and SKU, quantity requested and not shipped does not exceed "
          "the on-hand stock at T", "{stg}.stock",
          query="SELECT s.source_code, s.sku, s.qty_on_hand, c.qty AS requested_not_shipped FROM {batch} s "
                # the open requests' lines by key, request by request (OFFSET 0 keeps it from being flattened into
                # a join), as the storefront reads them: a hash join would read every request line of the history
                "JOIN (SELECT r.source_code, l.sku, sum(l.quantity) AS qty FROM oms.shipment_requests r "
                "CROSS JOIN LATERAL (SELECT * FROM oms.shipment_request_lines l "
                "WHERE l.shipment_request_id = r.shipment_request_id OFFSET 0) l WHERE r.status = 'REQUESTED' "
                "GROUP BY 1, 2) c USING (source_code, sku) WHERE c.qty > s.qty_on_hand ORDER BY 1, 2",
          default="warn"),
]


def check_ids() -> list[str]:
    """Every check id (the allow-list checks.yaml is validated against)."""
    return [c.id for c in CHECKS]


# ----------------------------------------------------------------------------------------------- running
@dataclass
class _Planned:
    check: Check
    blocking: bool
    table: str                      # resolved: schema.table
    query: str | None = None        # resolved SQL
    kwargs: dict = field(default_factory=dict)


def run_stage(url: str, t, stage: str, rules=None) -> list[dict]:
    """Run the checks of one gate on PostgreSQL with Great Expectations; record, log and report the results.

    Raises cycle.CheckFailed when a blocking check fails (after the results are recorded)."""
    from backorders import db
    from backorders.cycle import CheckFailed, as_run_time, run_id_for, staging_schema
    from backorders.rules import load_rules

    if stage not in STAGES:
        raise ValueError(f"stage: one of {STAGES}, got {stage!r}")
    t = as_run_time(t)
    rules = rules or load_rules()
    stg = staging_schema(t)
    if not STAGING.match(stg):           # identifiers spliced into SQL are ours and checked; values are bound
        raise ValueError(f"unexpected staging schema name {stg!r}")
    checks = [c for c in CHECKS if c.stage == stage]
    with db.transaction(url) as conn, conn.cursor() as cur:
        planned = [_plan(cur, c, stg, t, rules.checks.action(c.id, c.default) == "block") for c in checks]
        observed = _balance(cur, stg, t) if stage == "extract" else {}
    results = _run_gx(url, planned, rules.checks.examples, stg)
    for r in results:
        r["observed"] = observed.get(r["check"])
    _record(url, t, stage, results)
    _log(results)
    try:
        write_report(url, t)
    except Exception as exc:          # the report is for people; a broken report must not fail the run
        log.warning("data-quality report of %s not written: %s: %s", run_id_for(t), type(exc).__name__, exc)
    failed = [r for r in results if r["blocking"] and not r["success"]]
    if failed:
        raise CheckFailed("; ".join(
            f"{r['description']}: {r['failing_rows']} rows (check {r['check']}, {r['expectation']} on {r['table']}), "
            f"e.g. {json.dumps(r['examples'][:2], default=str)}" for r in failed))
    return results


def _plan(cur, check: Check, stg: str, t, blocking: bool) -> _Planned:
    if not TABLE.match(check.table):
        raise ValueError(f"check {check.id}: table {check.table!r} is not a staging, oms or landing table")
    table = check.table.replace("{stg}", stg)
    p = _Planned(check, blocking, table)
    if check.query is not None:
        # bind T (and nothing else) client-side: the text handed to Great Expectations is complete SQL
        p.query = cur.mogrify(check.query.replace("{stg}", stg), {"t": t}).decode()
        return p
    name, kwargs = check.expectation
    resolved = {}
    for k, v in kwargs.items():
        if v is T:
            v = t
        elif isinstance(v, ColumnsOf):
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                        "AND table_name = %s ORDER BY ordinal_position", (v.schema, v.table))
            v = [c for (c,) in cur.fetchall()]
        resolved[k] = v
    p.kwargs = resolved
    return p


# Great Expectations, once per process: the module (seconds to import), the one-pass unexpected-rows expectation and
# one ephemeral context per database (its SQL datasource, table assets and batch definitions), reused by the gates of
# a run (adding assets is what costs in a context: GX serializes its whole configuration on each). Every validation
# computes its metrics afresh; what the execution engine keeps besides (its metric cache, its reflection inspector) is
# dropped before every gate all the same, and the connection pools are closed after it: no connection stays open
# between gates, and a reused context sees the database as it is now (tests/test_quality.py checks both).
_GX: dict[str, Any] = {}
_CONTEXTS: dict[str, "_Context"] = {}
_LOCK = threading.Lock()
MAX_CONTEXTS = 2                    # databases whose context is kept (the cycle uses one; tests use many)
EXAMPLE_ROWS = 200                  # failing rows read per check, the examples are chosen among them
FAILING_ROWS = "gx_failing_rows__"  # the count column the one-pass query adds


def _gx() -> tuple[Any, type]:
    """great_expectations and UnexpectedRowsOnePass, imported and defined once per process."""
    if not _GX:
        import great_expectations as gx

        class UnexpectedRowsOnePass(gx.expectations.UnexpectedRowsExpectation):
            """UnexpectedRowsExpectation in one pass over the data.

            The stock expectation runs its query twice (COUNT(*) of it, then its first 200 rows) and SUMMARY drops
            the rows. Here the query (see _one_pass) returns its first rows with the number of all of them, so the
            failing rows are counted and shown from a single execution: success iff the query returns no row."""

            metric_dependencies = ("unexpected_rows_query.table",)

            def _validate(self, metrics: dict, runtime_configuration: dict | None = None,
                          execution_engine=None) -> dict:
                rows = metrics["unexpected_rows_query.table"] or []
                failing = int(rows[0][FAILING_ROWS]) if rows else 0
                return {"success": failing == 0, "result": {
                    "observed_value": failing,
                    "details": {"unexpected_rows": [{k: v for k, v in r.items() if k != FAILING_ROWS}
                                                    for r in rows]}}}

        _GX.update(gx=gx, one_pass=UnexpectedRowsOnePass)
    return _GX["gx"], _GX["one_pass"]


def _one_pass(query: str) -> str:
    """The check's query with the count of all its rows on each of its first EXAMPLE_ROWS rows."""
    return f"SELECT count(*) OVER () AS {FAILING_ROWS}, failing.* FROM ({query}) failing LIMIT {EXAMPLE_ROWS}"


@dataclass
class _Context:
    ctx: Any
    ds: Any
    stg: str
    batches: dict[str, Any] = field(default_factory=dict)      # schema.table: its batch definition

    def batch_definition(self, table: str):
        if table not in self.batches:
            schema_name, table_name = table.split(".")
            asset = self.ds.add_table_asset(f"a{len(self.batches)}_{schema_name}_{table_name}",
                                            table_name=table_name, schema_name=schema_name)
            self.batches[table] = asset.add_batch_definition_whole_table("whole table")
        return self.batches[table]

    def engines(self) -> list:
        return [e for e in (getattr(self.ds, "_engine", None),
                            getattr(getattr(self.ds, "_execution_engine", None), "engine", None)) if e is not None]

    def forget(self) -> bool:
        """Drop what GX remembers between validations: resolved metrics and reflected table columns. False if this
        version of GX keeps them elsewhere (then the context is not reused)."""
        engine = self.ds.get_execution_engine()
        if not isinstance(getattr(engine, "_metric_cache", None), dict) or not hasattr(engine, "_inspector"):
            return False
        engine._metric_cache.clear()
        engine._inspector = None
        return True

    def close(self) -> None:
        """Close every pooled connection GX opened (its datasource and execution engine each hold a pool); the
        engines reconnect when used again."""
        for engine in self.engines():
            engine.dispose()


def _context(url: str, stg: str) -> _Context:
    """The process's GX context for the database at url and the run of staging schema stg (a new run: a new one)."""
    gx, _ = _gx()
    c = _CONTEXTS.pop(url, None)
    if c is not None and (c.stg != stg or not c.forget()):
        c.close()
        c = None
    if c is None:
        from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                                ProgressBarsConfig)

        ctx = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False)))
        with warnings.catch_warnings():     # the generic SQL datasource also takes socket URLs, which Postgres' does not
            warnings.simplefilter("ignore")
            ds = ctx.data_sources.add_sql("backorders_db", connection_string=url)
        c = _Context(ctx, ds, stg)
    _CONTEXTS[url] = c                      # most recently used last
    while len(_CONTEXTS) > MAX_CONTEXTS:
        _CONTEXTS.pop(next(iter(_CONTEXTS))).close()
    return c


def _run_gx(url: str, planned: list[_Planned], examples: int, stg: str) -> list[dict]:
    """Validate the planned checks with Great Expectations: one suite per table (its batch) and kind.

    SQL checks: UnexpectedRowsOnePass, one execution of the query, which returns the count and the first failing
    rows. Column and table expectations: first result format BOOLEAN_ONLY (GX computes the counts, bundled into one
    query per table where it can, and no example rows); the ones that fail are validated again with SUMMARY and the
    key columns of the table (KEYS) to report the failing rows and a few of their keys."""
    gx, one_pass = _gx()
    with _LOCK:                             # one validation at a time per process: a context is not shared
        c = _context(url, stg)
        try:
            by_id = _validate(gx, one_pass, c, planned, examples)
        except BaseException:
            if _CONTEXTS.get(url) is c:     # not reused after an error
                del _CONTEXTS[url]
            raise
        finally:
            c.close()
    out = []
    for p in planned:
        r = by_id.get(p.check.id) or {"success": False, "failing_rows": 0, "expectation": "not run",
                                      "examples": [{"error": "the expectation did not run"}]}
        out.append({"stage": p.check.stage, "check": p.check.id, "description": p.check.description,
                    "expectation": r["expectation"], "table": p.check.table, "blocking": p.blocking,
                    "success": r["success"], "failing_rows": r["failing_rows"], "examples": r["examples"]})
    return out


def _validate(gx, one_pass: type, c: _Context, planned: list[_Planned], examples: int) -> dict[str, dict]:
    by_id: dict[str, dict] = {}
    groups: dict[str, list[_Planned]] = {}
    for p in planned:
        groups.setdefault(p.table, []).append(p)
    for n, (table, items) in enumerate(sorted(groups.items())):
        batch = c.batch_definition(table).get_batch()
        rows = [p for p in items if p.query is not None]
        builtin = [p for p in items if p.query is None]
        if rows:
            for er in batch.validate(_suite(gx, f"{n}_rows", rows, one_pass), result_format="SUMMARY").results:
                by_id[er.expectation_config.meta["check"]] = _result(er, examples)
        if builtin:
            failed = set()
            for er in batch.validate(_suite(gx, f"{n}_columns", builtin), result_format="BOOLEAN_ONLY").results:
                check = er.expectation_config.meta["check"]
                if er.success and not (er.exception_info or {}).get("raised_exception"):
                    by_id[check] = {"success": True, "failing_rows": 0, "examples": [],
                                    "expectation": er.expectation_config.type}
                else:
                    failed.add(check)
            again = [p for p in builtin if p.check.id in failed]
            if again:
                fmt: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": max(examples, 1)}
                if KEYS.get(items[0].check.table):
                    fmt["unexpected_index_column_names"] = KEYS[items[0].check.table]
                for er in batch.validate(_suite(gx, f"{n}_failed", again), result_format=fmt).results:
                    by_id[er.expectation_config.meta["check"]] = _result(er, examples)
    return by_id


def _suite(gx, name: str, items: list[_Planned], one_pass: type | None = None):
    suite = gx.ExpectationSuite(name=name)
    for p in items:
        if p.query is not None:
            exp = one_pass(unexpected_rows_query=_one_pass(p.query), description=p.check.description,
                           meta={"check": p.check.id})
        else:
            exp = getattr(gx.expectations, p.check.expectation[0])(
                **p.kwargs, description=p.check.description, meta={"check": p.check.id})
        suite.add_expectation(exp)
    return suite


def _shown(rows: list, examples: int) -> list:
    return sorted((mask_value(_jsonable(r)) for r in rows), key=lambda r: json.dumps(r, sort_keys=True))[:examples]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _result(er, examples: int) -> dict:
    """failing rows and a few masked examples from a Great Expectations validation result."""
    kind = er.expectation_config.type
    if kind == "unexpected_rows_one_pass":          # our one-pass subclass: the same expectation, the same result
        kind = "unexpected_rows_expectation"
    res = er.result or {}
    info = er.exception_info or {}
    errors = [i.get("exception_message") for i in (info.values() if "raised_exception" not in info else [info])
              if isinstance(i, dict) and i.get("raised_exception")]
    if errors:
        return {"success": False, "failing_rows": 0, "expectation": kind,
                "examples": [{"error": mask_value(str(errors[0]))}]}
    if kind == "unexpected_rows_expectation":
        failing = int(res.get("observed_value") or 0)
        rows = (res.get("details") or {}).get("unexpected_rows") or []
    elif "unexpected_count" in res:
        failing = int(res.get("unexpected_count") or 0)
        rows = res.get("partial_unexpected_index_list") or [{"value": v} for v in res.get("partial_unexpected_list", [])]
    else:                                       # table-level expectation: the table as a whole passes or not
        failing = 0 if er.success else 1
        rows = [] if er.success else [{"observed": res.get("observed_value"),
                                       "expected": {k: v for k, v in er.expectation_config.kwargs.items()
                                                    if k in ("column_list", "type_", "column")}}]
    return {"success": bool(er.success) and failing == 0, "failing_rows": failing, "expectation": kind,
            "examples": _shown(rows, examples)}


def _balance(cur, stg: str, t) -> dict[str, dict]:
    """The nothing-lost balance of the run: messages and stock rows in = processed + quarantined + not yet due."""
    cur.execute(f"""
        SELECT (SELECT count(*) FROM landing.order_messages),
               (SELECT count(*) FROM oms.consumed_messages),
               (SELECT count(*) FROM {stg}.consumed),
               (SELECT count(*) FROM {stg}.consumed WHERE outcome = 'PROCESSED'),
               (SELECT count(*) FROM {stg}.consumed WHERE outcome = 'DUPLICATE'),
               (SELECT count(*) FROM {stg}.consumed WHERE outcome = 'QUARANTINED'),
               (SELECT count(*) FROM landing.order_messages m WHERE m.received_at > %(t)s
                  AND NOT EXISTS (SELECT 1 FROM oms.consumed_messages c WHERE c.message_id = m.message_id)),
               (SELECT count(*) FROM {stg}.stock_intake),
               (SELECT count(*) FROM {stg}.stock_intake WHERE status = 'VALID'),
               (SELECT count(*) FROM {stg}.stock_intake WHERE status = 'QUARANTINED'),
               (SELECT count(*) FROM {stg}.stock_intake WHERE status = 'NOT_DUE'),
               (SELECT count(*) FROM {stg}.quarantine WHERE source LIKE 'file:%%')""", {"t": t})
    (landed, before, msg_in, processed, duplicate, quarantined, not_due,
     stock_in, stock_valid, stock_q, stock_not_due, file_q) = (int(v) for v in cur.fetchone())
    return {
        "extract.nothing_lost_messages": {
            "messages_landed": landed, "consumed_by_earlier_runs": before, "messages_in": msg_in,
            "processed": processed, "duplicate": duplicate, "quarantined": quarantined, "not_yet_due": not_due,
            "balanced": landed == before + processed + duplicate + quarantined + not_due},
        "extract.nothing_lost_stock": {
            "stock_rows_in": stock_in, "valid": stock_valid, "quarantined": stock_q, "not_yet_due": stock_not_due,
            "file_rows_quarantined": file_q, "balanced": stock_in == stock_valid + stock_q + stock_not_due},
    }


BALANCE_ORDER = {  # figures of the nothing-lost balances, in the order the report shows them
    "extract.nothing_lost_messages": ["messages_landed", "consumed_by_earlier_runs", "messages_in", "processed",
                                      "duplicate", "quarantined", "not_yet_due"],
    "extract.nothing_lost_stock": ["stock_rows_in", "valid", "quarantined", "not_yet_due", "file_rows_quarantined"],
}


def _record(url: str, t, stage: str, results: list[dict]) -> None:
    """oms.dq_results rows and the stage's entries of oms.pipeline_runs.dq_results (replacing an earlier attempt)."""
    from psycopg2.extras import execute_values

    from backorders import db

    summary = [{k: r[k] for k in ("stage", "check", "description", "blocking", "success", "failing_rows",
                                  "examples")} for r in results]
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM oms.dq_results WHERE run_at = %s AND stage = %s", (t, stage))
        execute_values(cur, """
            INSERT INTO oms.dq_results (run_at, stage, check_id, description, expectation, table_name, blocking,
                success, failing_rows, examples, observed) VALUES %s""",
            [(t, stage, r["check"], r["description"], r["expectation"], r["table"], r["blocking"], r["success"],
              r["failing_rows"], json.dumps(r["examples"], sort_keys=True),
              json.dumps(r["observed"], sort_keys=True) if r.get("observed") is not None else None)
             for r in results],
            template="(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)")
        # in the gates' order, whichever of two gates run side by side records first: the same run, the same array
        cur.execute("""
            UPDATE oms.pipeline_runs SET dq_results = (
                SELECT coalesce(jsonb_agg(e ORDER BY array_position(%(stages)s::text[], e ->> 'stage'), n), '[]'::jsonb)
                FROM (SELECT e, n FROM jsonb_array_elements(dq_results) WITH ORDINALITY x (e, n)
                      WHERE e ->> 'stage' IS DISTINCT FROM %(stage)s
                      UNION ALL
                      SELECT e, n FROM jsonb_array_elements(%(new)s::jsonb) WITH ORDINALITY y (e, n)) z)
            WHERE run_at = %(t)s""", {"stage": stage, "new": json.dumps(summary), "t": t, "stages": list(STAGES)})


def _log(results: list[dict]) -> None:
    failed = [r for r in results if not r["success"]]
    for r in failed:
        (log.error if r["blocking"] else log.warning)(
            "data-quality check %s %s: %r (%s on %s) failed on %d rows, e.g. %s",
            r["check"], "BLOCKS the run" if r["blocking"] else "warns", r["description"], r["expectation"],
            r["table"], r["failing_rows"], json.dumps(r["examples"][:3], default=str))
    if results:
        log.info("data-quality gate %s: %d checks, %d passed, %d failed (%d blocking)", results[0]["stage"],
                 len(results), len(results) - len(failed), len(failed), sum(r["blocking"] for r in failed))


# ----------------------------------------------------------------------------------------------- report
def report_dir() -> Path:
    """Folder of the HTML reports: BACKORDERS_DQ_REPORT_DIR, or reports/dq of the project (git-ignored)."""
    from backorders.settings import PROJECT_ROOT

    return Path(os.environ.get("BACKORDERS_DQ_REPORT_DIR") or PROJECT_ROOT / "reports" / "dq")


def write_report(url: str, t, folder: Path | None = None) -> Path:
    """Render the run's page (every gate run so far) and the index of runs from oms.dq_results; return the page."""
    from backorders import db
    from backorders.cycle import as_run_time, run_id_for
    from backorders.settings import TEMPLATES_DIR

    t = as_run_time(t)
    folder = Path(folder or report_dir())
    folder.mkdir(parents=True, exist_ok=True)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("""SELECT stage, check_id, description, expectation, table_name, blocking, success, failing_rows,
                              examples, observed FROM oms.dq_results WHERE run_at = %s""", (t,))
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        cur.execute("SELECT status, error FROM oms.pipeline_runs WHERE run_at = %s", (t,))
        run = cur.fetchone() or ("UNKNOWN", None)
        cur.execute("""SELECT run_at, count(*), count(*) FILTER (WHERE NOT success AND blocking),
                              count(*) FILTER (WHERE NOT success AND NOT blocking), array_agg(DISTINCT stage)
                       FROM oms.dq_results GROUP BY run_at ORDER BY run_at DESC LIMIT 500""")
        runs = [{"run_id": run_id_for(r[0]), "run_at": r[0].isoformat(), "checks": r[1], "blocked": r[2],
                 "warnings": r[3], "stages": [s for s in STAGES if s in r[4]]} for r in cur.fetchall()]
    order = {c.id: n for n, c in enumerate(CHECKS)}
    rows.sort(key=lambda r: (STAGES.index(r["stage"]), order.get(r["check_id"], 1_000), r["check_id"]))
    stages = []
    for s in STAGES:
        items = [r for r in rows if r["stage"] == s]
        if items:
            for r in items:
                r["columns"] = sorted({k for e in r["examples"] if isinstance(e, dict) for k in e})
            stages.append({"name": s, "checks": items, "failed": sum(not r["success"] for r in items),
                           "blocked": sum(not r["success"] and r["blocking"] for r in items)})
    balances = [{"description": r["description"], "balanced": r["observed"].get("balanced"),
                 "figures": [(k.replace("_", " "), r["observed"][k]) for k in BALANCE_ORDER.get(r["check_id"], sorted(r["observed"])) if k in r["observed"]]}
                for r in rows if r["observed"]]
    blocked_at = next((s["name"] for s in stages if s["blocked"]), None)
    template = _template(str(TEMPLATES_DIR))
    page = folder / f"{run_id_for(t)}.html"
    status = f"FAILED: blocked at the {blocked_at} gate" if blocked_at else \
        "published, every gate run" if any(s["name"] == "load" for s in stages) else f"{run[0]} (not every gate run yet)"
    page.write_text(template.render(page="run", run_id=run_id_for(t), run_at=t.isoformat(), status=status,
                                    error=mask_value(run[1]) if run[1] else None, stages=stages,
                                    balances=balances, runs=runs), encoding="utf-8")
    (folder / "index.html").write_text(template.render(page="index", runs=runs), encoding="utf-8")
    return page


_TEMPLATES: dict[str, Any] = {}


def _template(folder: str):
    """The report template, compiled once per process (Jinja reloads it if the file changes)."""
    if folder not in _TEMPLATES:
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        _TEMPLATES[folder] = Environment(loader=FileSystemLoader(folder), autoescape=select_autoescape(default=True))
    return _TEMPLATES[folder].get_template("dq_report.html.j2")
