"""The outboxes a run at T writes besides the customer emails: payment requests (captures, refunds,
re-authorizations) and shipment messages for logistics; AUTHORIZATION_EXPIRED exceptions; the delivery window.

Every row is derived from the oms tables and T only (ids from idempotency keys, amounts from the lines), and is
inserted with ``ON CONFLICT (idempotency_key) DO NOTHING``: running a stage again, or re-running T after a rewind
that kept a delivered row, never queues a second row for the same effect. Delivery is backorders/delivery.py.

The one wall-clock decision: a run whose T is older than ``outbox.yaml: delivery.window_days`` (a backfill, a late
re-run) records its rows as SUPPRESSED instead of PENDING, so that nothing of it reaches customers, the payment
service or logistics. See docs/outboxes.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from backorders.ftc import add_working_days  # one working-day calendar for every refund due date
from backorders import db
from backorders.rules import Rules, load_rules

log = logging.getLogger(__name__)

OUTBOX_TABLES = ("notifications", "payment_requests", "shipment_messages")
REQUEST_SHIPMENT = "magento.logistics.warehouse_management.request_shipment"
# ISO 4217 minor units where they are not 2
_ZERO_DECIMALS = ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF",
                  "XOF", "XPF")
_THREE_DECIMALS = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
_DIGITS_SQL = (f"CASE WHEN o.currency IN {_ZERO_DECIMALS!r} THEN 0 WHEN o.currency IN {_THREE_DECIMALS!r} THEN 3 "
               "ELSE 2 END")
_ISO = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'"


def _run_time(t) -> datetime:
    from backorders.cycle import as_run_time

    return as_run_time(t)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def is_deliverable(t: datetime, now: datetime | None = None, window_days: float = 2.0) -> bool:
    """Whether the side effects of the run at T are delivered: T is at most window_days older than the wall clock
    (now). A T in the future counts as recent."""
    now = now or utcnow()
    return t >= now - timedelta(days=window_days)


def payment_request_id(key: str) -> str:
    return "PR-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def _money(value, digits: int) -> str:
    return f"{Decimal(value if value is not None else 0):.{int(digits)}f}"


# ----------------------------------------------------------------------------------------------- the stage
def queue_outboxes(url: str, t, rules: Rules | None = None, now: datetime | None = None) -> dict:
    """The side_effects stage of run T (after publish): captures, refunds and re-authorizations in
    oms.payment_requests, AUTHORIZATION_EXPIRED exceptions, request_shipment messages in oms.shipment_messages.

    Rows are PENDING, or SUPPRESSED when T is older than the delivery window. One transaction."""
    t = _run_time(t)
    rules = rules or load_rules()
    settings = rules.outbox
    deliverable = is_deliverable(t, now, settings.delivery.window_days)
    status = "PENDING" if deliverable else "SUPPRESSED"
    with db.transaction(url) as conn, conn.cursor() as cur:
        _payment_methods(cur, rules)
        _money_events(cur, t)
        requests = _captures(cur, t) + _refunds(cur, t, rules) + _reauthorizations(cur, t)
        inserted = _insert_requests(cur, requests, t, status)
        lapsed, closed = _authorization_exceptions(cur, t)
        messages = _shipment_messages(cur, t, status) if settings.shipment_messages.enabled else 0
    figures = {"deliverable": deliverable, "status": status,
               "captures": sum(1 for r in requests if r["kind"] == "CAPTURE"),
               "refunds": sum(1 for r in requests if r["kind"] == "REFUND"),
               "reauthorizations": sum(1 for r in requests if r["kind"] == "REAUTHORIZE"),
               "payment_requests_inserted": inserted, "authorizations_expired": lapsed,
               "authorization_exceptions_closed": closed, "shipment_messages": messages}
    log.info("queued payment requests and shipment messages at %s: %s", t.isoformat(), figures)
    return figures


def apply_delivery_window(url: str, t, rules: Rules | None = None, now: datetime | None = None) -> dict:
    """Mark every outbox row of run T that is still PENDING and never attempted as SUPPRESSED when T is older than the
    delivery window. With queue_outboxes, the only place that compares T with the wall clock. Idempotent; a no-op
    for a recent T. (Emails are queued by cycle.queue_notifications and the lifecycle stage: this is how they get
    the window too; in-process right after queueing, under Airflow at the start of deliver_notifications.)"""
    t = _run_time(t)
    rules = rules or load_rules()
    window = rules.outbox.delivery.window_days
    if is_deliverable(t, now, window):
        return {"deliverable": True, "suppressed": 0}
    suppressed = 0
    with db.transaction(url) as conn, conn.cursor() as cur:
        for table in OUTBOX_TABLES:
            cur.execute(f"UPDATE oms.{table} SET status = 'SUPPRESSED' "
                        "WHERE created_at = %s AND status = 'PENDING' AND attempts = 0", (t,))
            suppressed += cur.rowcount
    if suppressed:
        log.warning("run %s is older than the delivery window (%s days): %d outbox rows recorded as SUPPRESSED, "
                    "not delivered", t.isoformat(), window, suppressed)
    return {"deliverable": False, "suppressed": suppressed}


# ----------------------------------------------------------------------------------------------- building blocks
def _payment_methods(cur, rules: Rules) -> None:
    """pm: the settings of every configured payment method, and of the defaults under the method '*'."""
    cur.execute("""CREATE TEMP TABLE pm (method text PRIMARY KEY, reauthorize boolean, reauth_interval_days integer,
                   authorization_validity_days integer, partial_capture boolean) ON COMMIT DROP""")
    rows = [("*", rules.payment_defaults)] + sorted(rules.payment_methods.items())
    cur.executemany("INSERT INTO pm VALUES (%s, %s, %s, %s, %s)",
                    [(name, m.reauthorize, m.reauth_interval_days, m.authorization_validity_days, m.partial_capture)
                     for name, m in rows])


_PM = "JOIN LATERAL (SELECT * FROM pm WHERE pm.method IN (o.payment_method, '*') ORDER BY pm.method = '*' LIMIT 1) m ON true"


def _money_events(cur, t: datetime) -> None:
    """money_ev: every quantity event (shipment request line, cancellation) of the orders that run T touched, with its
    share of the line's gross and tax amounts.

    Shares are cumulative differences, round(amount * cumulative qty / ordered) minus the same before the event, in
    event order (T, shipment requests before cancellations, shipment number, cancellation kind): the shares of one
    line always add up to exactly its amount, whatever the split (10.00 in three parts: 3.33, 3.34, 3.33)."""
    cur.execute(f"""
        CREATE TEMP TABLE money_ev ON COMMIT DROP AS
        WITH touched AS (
            SELECT order_id FROM oms.shipment_requests WHERE requested_at = %(t)s
            UNION SELECT order_id FROM oms.line_cancellations WHERE run_at = %(t)s
        ),
        e AS (
            SELECT l.order_id, l.line_id, r.requested_at AS at, 0 AS rnk, r.shipment_number AS seq, '' AS ckind,
                   r.shipment_request_id, l.quantity
            FROM touched k JOIN oms.shipment_requests r USING (order_id)
            JOIN oms.shipment_request_lines l USING (shipment_request_id)
            UNION ALL
            SELECT c.order_id, c.line_id, c.run_at, 1, 0, c.kind, NULL, c.quantity
            FROM touched k JOIN oms.line_cancellations c USING (order_id)
        ),
        c AS (
            SELECT e.*, sum(e.quantity) OVER (PARTITION BY e.order_id, e.line_id ORDER BY e.at, e.rnk, e.seq, e.ckind
                                              ROWS UNBOUNDED PRECEDING) AS cum_after
            FROM e
        ),
        v AS (
            SELECT c.*, ol.line_number, ol.sku, ol.qty_ordered, coalesce(ol.gross_amount, 0) AS gross,
                   coalesce(ol.tax_amount, 0) AS tax, {_DIGITS_SQL} AS digits
            FROM c JOIN oms.order_lines ol USING (order_id, line_id) JOIN oms.orders o USING (order_id)
        )
        SELECT v.*,
               round(gross * cum_after / qty_ordered, digits) - round(gross * (cum_after - quantity) / qty_ordered, digits)
                   AS gross_share,
               round(tax * cum_after / qty_ordered, digits) - round(tax * (cum_after - quantity) / qty_ordered, digits)
                   AS tax_share
        FROM v""", {"t": t})


_ORDER_COLS = "o.currency, o.payment_method, o.payment_reference, o.gateway_id, o.transaction_id"


def _request(kind, key, row, amount, tax, digits, t, **extra) -> dict:
    """One payment request with its JSON body (what is posted to the payment service)."""
    order_id, currency, method, reference, gateway, transaction = row
    rid = payment_request_id(key)
    due_at = extra.pop("due_at", t)
    body = {"payment_request_id": rid, "idempotency_key": key, "kind": kind, "order_id": order_id,
            "amount": _money(amount, digits), "tax_amount": _money(tax, digits), "currency": currency,
            "payment_method": method, "payment_reference": reference, "gateway_id": gateway,
            "transaction_id": transaction, "requested_at": t.isoformat(), "due_at": due_at.isoformat(), **extra}
    return {"payment_request_id": rid, "idempotency_key": key, "order_id": order_id, "kind": kind,
            "shipment_request_id": extra.get("shipment_request_id"), "line_id": extra.get("line_id"),
            "amount": Decimal(body["amount"]), "tax_amount": Decimal(body["tax_amount"]), "currency": currency,
            "payment_method": method, "due_at": due_at, "reason": extra.get("reason"), "body": body}


def _lines(raw) -> list[dict]:
    return [{**x, "quantity": int(x["quantity"])} for x in (raw or [])]


def _captures(cur, t: datetime) -> list[dict]:
    """CAPTURE requests: one per shipment request of T for the value of its lines where the payment method allows
    partial capture; otherwise one per order, when the order has nothing left to ship (no backordered or held
    quantity), for every shipped line, attached to its last shipment request."""
    line_json = ("json_agg(json_build_object('shipment_request_id', e.shipment_request_id, 'line_id', e.line_id, "
                 "'sku', e.sku, 'quantity', e.quantity, 'amount', e.gross_share::text, 'tax_amount', e.tax_share::text) "
                 "ORDER BY e.seq, e.line_number, e.line_id)")
    cur.execute(f"""
        SELECT e.shipment_request_id, o.order_id, {_ORDER_COLS}, max(e.digits), sum(e.gross_share), sum(e.tax_share),
               {line_json}
        FROM money_ev e JOIN oms.orders o USING (order_id) {_PM}
        WHERE e.rnk = 0 AND e.at = %(t)s AND m.partial_capture AND o.payment_method IS NOT NULL
        GROUP BY e.shipment_request_id, o.order_id
        ORDER BY e.shipment_request_id""", {"t": t})
    out = []
    for sr, *order, digits, amount, tax, lines in cur.fetchall():
        if amount and amount > 0:
            out.append(_request("CAPTURE", f"CAPTURE/{sr}", order, amount, tax, digits, t, shipment_request_id=sr,
                                reason=f"settlement of shipment request {sr}", lines=_lines(lines)))
    cur.execute(f"""
        WITH done AS (
            SELECT DISTINCT e.order_id FROM money_ev e JOIN oms.orders o USING (order_id) {_PM}
            WHERE NOT m.partial_capture AND o.payment_method IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM oms.order_lines l WHERE l.order_id = e.order_id
                              AND l.qty_backordered + l.qty_held > 0)
        )
        SELECT (SELECT r.shipment_request_id FROM oms.shipment_requests r WHERE r.order_id = o.order_id
                ORDER BY r.shipment_number DESC LIMIT 1),
               o.order_id, {_ORDER_COLS}, max(e.digits), sum(e.gross_share), sum(e.tax_share), {line_json}
        FROM done JOIN money_ev e USING (order_id) JOIN oms.orders o USING (order_id)
        WHERE e.rnk = 0
        GROUP BY o.order_id
        ORDER BY o.order_id""")
    for sr, *order, digits, amount, tax, lines in cur.fetchall():
        if amount and amount > 0:
            out.append(_request("CAPTURE", f"CAPTURE/{order[0]}", order, amount, tax, digits, t,
                                shipment_request_id=sr,
                                reason=f"one settlement of the whole order with its last shipment request {sr}",
                                lines=_lines(lines)))
    return out


def _refunds(cur, t: datetime, rules: Rules) -> list[dict]:
    """REFUND requests: one per oms.line_cancellations row of T, whatever its kind, for the cancelled quantity's share
    of the line's gross amount; due T + refund_due_working_days working days (or the cancellation's own
    refund_due_at where the lifecycle stage recorded one)."""
    cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = 'oms' "
                "AND table_name = 'line_cancellations' AND column_name = 'refund_due_at'")
    due_col = "c.refund_due_at" if cur.fetchone() else "NULL::timestamptz"
    cur.execute(f"""
        SELECT o.order_id, {_ORDER_COLS}, e.line_id, e.sku, e.ckind, e.quantity, e.digits, e.gross_share, e.tax_share,
               c.reason, o.store, {due_col}
        FROM money_ev e JOIN oms.orders o USING (order_id)
        JOIN oms.line_cancellations c ON c.order_id = e.order_id AND c.line_id = e.line_id AND c.run_at = e.at
                                      AND c.kind = e.ckind
        WHERE e.rnk = 1 AND e.at = %(t)s AND o.payment_method IS NOT NULL
        ORDER BY o.order_id, e.line_number, e.line_id, e.ckind""", {"t": t})
    out = []
    days = rules.outbox.payments.refund_due_working_days
    for (*order, line_id, sku, kind, qty, digits, amount, tax, reason, store, due) in cur.fetchall():
        if not amount or amount <= 0:
            continue
        due = due or add_working_days(t, days, rules.channel(store).timezone)
        key = f"REFUND/{order[0]}/{line_id}/{t.isoformat()}/{kind}"
        out.append(_request("REFUND", key, order, amount, tax, digits, t, due_at=due, line_id=line_id,
                            reason=f"{kind}: {reason}",
                            lines=[{"line_id": line_id, "sku": sku, "quantity": int(qty),
                                    "amount": _money(amount, digits), "tax_amount": _money(tax, digits)}]))
    return out


def _reauthorizations(cur, t: datetime) -> list[dict]:
    """REAUTHORIZE requests: every order with open backorder quantity whose payment method re-authorizes, when
    reauth_interval_days have passed since its last authorization (orders.last_authorized_at: the origin date, then
    each re-authorization that did not fail). The amount is what is still to be captured. Sets last_authorized_at."""
    cur.execute(f"""
        CREATE TEMP TABLE bo_orders ON COMMIT DROP AS
        SELECT o.order_id, {_ORDER_COLS}, {_DIGITS_SQL} AS digits, coalesce(o.last_authorized_at, o.origin_date) AS last_auth,
               m.reauth_interval_days, m.authorization_validity_days, m.partial_capture
        FROM (SELECT DISTINCT order_id FROM oms.order_lines
              WHERE qty_backordered + qty_held > 0 AND qty_backordered > 0) b
        JOIN oms.orders o USING (order_id) {_PM}
        WHERE o.payment_method IS NOT NULL AND m.reauthorize AND o.origin_date <= %(t)s""", {"t": t})
    cur.execute("""
        SELECT b.order_id, b.currency, b.payment_method, b.payment_reference, b.gateway_id, b.transaction_id, b.digits,
               round(sum(coalesce(l.gross_amount, 0) * (l.qty_backordered + l.qty_held
                         + CASE WHEN b.partial_capture THEN 0 ELSE l.qty_allocated + l.qty_shipped END) / l.qty_ordered),
                     b.digits),
               round(sum(coalesce(l.tax_amount, 0) * (l.qty_backordered + l.qty_held
                         + CASE WHEN b.partial_capture THEN 0 ELSE l.qty_allocated + l.qty_shipped END) / l.qty_ordered),
                     b.digits),
               b.last_auth, b.reauth_interval_days
        FROM bo_orders b JOIN oms.order_lines l USING (order_id)
        WHERE %(t)s >= b.last_auth + make_interval(days => b.reauth_interval_days)
        GROUP BY b.order_id, b.currency, b.payment_method, b.payment_reference, b.gateway_id, b.transaction_id,
                 b.digits, b.last_auth, b.reauth_interval_days
        ORDER BY b.order_id""", {"t": t})
    out = []
    for order_id, *rest in cur.fetchall():
        order = (order_id, *rest[:5])
        digits, amount, tax, last, interval = rest[5:]
        out.append(_request("REAUTHORIZE", f"REAUTHORIZE/{order_id}/{t.isoformat()}", order, amount, tax, digits, t,
                            reason=f"open backorder; last authorized {last.astimezone(timezone.utc).isoformat()}, "
                                   f"re-authorized every {interval} days"))
    ids = [r["order_id"] for r in out]
    if ids:
        cur.execute("UPDATE oms.orders SET last_authorized_at = %s WHERE order_id = ANY(%s)", (t, ids))
        cur.execute("UPDATE bo_orders SET last_auth = %s WHERE order_id = ANY(%s)", (t, ids))
    return out


def _insert_requests(cur, requests: list[dict], t: datetime, status: str) -> int:
    if not requests:
        return 0
    from psycopg2.extras import execute_values

    rows = [(r["payment_request_id"], r["idempotency_key"], r["order_id"], r["shipment_request_id"], r["line_id"],
             r["kind"], r["amount"], r["tax_amount"], r["currency"], r["payment_method"], r["due_at"], t, status,
             r["reason"], json.dumps(r["body"], sort_keys=True)) for r in requests]
    inserted = execute_values(cur, """
        INSERT INTO oms.payment_requests (payment_request_id, idempotency_key, order_id, shipment_request_id, line_id,
            kind, amount, tax_amount, currency, payment_method, due_at, created_at, status, reason, body)
        VALUES %s ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1""", rows, page_size=1000, fetch=True)
    return len(inserted)


def _authorization_exceptions(cur, t: datetime) -> tuple[int, int]:
    """AUTHORIZATION_EXPIRED (severity high): an order with open backorder quantity whose last authorization's
    validity ended before T and was not renewed in this run (authorization_validity_days shorter than
    reauth_interval_days, or a failed re-authorization). One exception per lapsed authorization; it closes by itself
    in the run that renews the authorization or leaves the order without backorders."""
    cur.execute(f"""
        CREATE TEMP TABLE lapsed ON COMMIT DROP AS
        SELECT order_id, payment_method, last_auth, authorization_validity_days, reauth_interval_days,
               last_auth + make_interval(days => authorization_validity_days) AS expired_at,
               'AUTHORIZATION_EXPIRED:' || order_id || ':' || to_char(last_auth AT TIME ZONE 'UTC', {_ISO}) AS cause_key
        FROM bo_orders
        WHERE last_auth + make_interval(days => authorization_validity_days) < %(t)s""", {"t": t})
    cur.execute(f"""
        INSERT INTO oms.exceptions (exception_id, order_id, line_id, kind, severity, opened_at, details, cause_key)
        SELECT 'EX-' || substr(md5(cause_key), 1, 16), order_id, NULL, 'AUTHORIZATION_EXPIRED', 'high', %(t)s,
               'the ' || payment_method || ' authorization of ' || to_char(last_auth AT TIME ZONE 'UTC', {_ISO})
               || ' expired on ' || to_char(expired_at AT TIME ZONE 'UTC', {_ISO}) || ' (valid '
               || authorization_validity_days || ' days) and was not renewed (re-authorization every '
               || reauth_interval_days || ' days); the order still has backorders',
               cause_key
        FROM lapsed
        ON CONFLICT (cause_key) DO NOTHING""", {"t": t})
    opened = cur.rowcount
    cur.execute("""
        UPDATE oms.exceptions e SET closed_at = %(t)s
        WHERE e.kind = 'AUTHORIZATION_EXPIRED' AND e.closed_at IS NULL AND e.opened_at <= %(t)s
          AND NOT EXISTS (SELECT 1 FROM lapsed l WHERE l.cause_key = e.cause_key)""", {"t": t})
    return opened, cur.rowcount


def _shipment_messages(cur, t: datetime, status: str) -> int:
    """One magento.logistics.warehouse_management.request_shipment message (JSON-RPC 2.0) per shipment request of T:
    the request, the order's shipping method and ship-by date, the shipping address of its lines, and its lines."""
    cur.execute(f"""
        WITH sr AS MATERIALIZED (
            SELECT r.shipment_request_id, r.order_id, r.source_code, r.shipment_number
            FROM oms.shipment_requests r
            WHERE r.requested_at = %(t)s
              AND NOT EXISTS (SELECT 1 FROM oms.shipment_messages m
                              WHERE m.idempotency_key = 'REQUEST_SHIPMENT/' || r.shipment_request_id)
        ),
        -- LATERAL lookups by key: the cost follows this run's requests, not the history of every request
        ln AS MATERIALIZED (
            SELECT sr.shipment_request_id, agg.lines, agg.first_line
            FROM sr CROSS JOIN LATERAL (
                SELECT jsonb_agg(jsonb_build_object('line_id', l.line_id, 'line_number', ol.line_number, 'sku', l.sku,
                                                    'product_name', ol.product_name, 'quantity', l.quantity)
                                 ORDER BY ol.line_number) AS lines,
                       (array_agg(l.line_id ORDER BY ol.line_number))[1] AS first_line
                FROM oms.shipment_request_lines l
                JOIN oms.order_lines ol ON ol.order_id = l.order_id AND ol.line_id = l.line_id
                WHERE l.shipment_request_id = sr.shipment_request_id
            ) agg
        ),
        x AS MATERIALIZED (
            SELECT sr.*, ln.lines, o.store, o.shipping_method, o.ship_by_date,
                   CASE WHEN jsonb_typeof(o.raw_order -> 'addresses') = 'array' THEN o.raw_order -> 'addresses'
                        ELSE '[]'::jsonb END AS addresses,
                   (SELECT e ->> 'shipping_address_reference'
                    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(o.raw_order -> 'lines') = 'array'
                                                   THEN o.raw_order -> 'lines' ELSE '[]'::jsonb END) e
                    WHERE e ->> 'id' = ln.first_line LIMIT 1) AS addr_ref
            FROM sr JOIN ln USING (shipment_request_id)
            CROSS JOIN LATERAL (SELECT * FROM oms.orders o WHERE o.order_id = sr.order_id) o
        )
        INSERT INTO oms.shipment_messages (message_id, idempotency_key, shipment_request_id, order_id, source_code,
                                           created_at, body, file_name, status)
        SELECT 'SM-' || x.shipment_request_id, 'REQUEST_SHIPMENT/' || x.shipment_request_id, x.shipment_request_id,
               x.order_id, x.source_code, %(t)s,
               jsonb_build_object(
                   'jsonrpc', '2.0', 'id', 'SM-' || x.shipment_request_id, 'method', %(method)s,
                   'params', jsonb_build_object('shipment_request', jsonb_build_object(
                       'id', x.shipment_request_id, 'order_id', x.order_id, 'store', x.store,
                       'source_code', x.source_code, 'shipment_number', x.shipment_number,
                       'date_requested', to_char(%(t)s::timestamptz AT TIME ZONE 'UTC', {_ISO}),
                       'shipping_method', x.shipping_method,
                       'ship_by_date', to_char(x.ship_by_date AT TIME ZONE 'UTC', {_ISO}),
                       'shipping_address', (
                           SELECT a FROM jsonb_array_elements(x.addresses) WITH ORDINALITY AS z(a, n)
                           ORDER BY coalesce(x.addr_ref IS NOT NULL AND a ->> 'reference' = x.addr_ref, false) DESC,
                                    coalesce(lower(a ->> 'address_type') = 'shipping', false) DESC, n
                           LIMIT 1),
                       'lines', x.lines))),
               regexp_replace(x.shipment_request_id, '[^A-Za-z0-9._-]', '_', 'g') || '.json', %(status)s
        FROM x
        ON CONFLICT (idempotency_key) DO NOTHING""", {"t": t, "method": REQUEST_SHIPMENT, "status": status})
    return cur.rowcount
