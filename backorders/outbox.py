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
import logging
from datetime import datetime, timedelta, timezone

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
    """The id of the payment request with that idempotency key (_insert_requests computes the same in SQL)."""
    return "PR-" + hashlib.sha256(key.encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------------------------- the stage
def _status(t: datetime, rules: Rules, now: datetime | None) -> tuple[bool, str]:
    deliverable = is_deliverable(t, now, rules.outbox.delivery.window_days)
    return deliverable, "PENDING" if deliverable else "SUPPRESSED"


# the run's events, orders and bodies sort, hash and stay in memory (set first in a new session: temp_buffers can be)
_BULK_SETTINGS = "SET LOCAL work_mem = '64MB'; SET LOCAL temp_buffers = '64MB'"

# the marker tables of the prepared outbox rows in the run's staging schema, written last by the prepare_* stages:
# the queue stages copy the prepared rows when their marker is there, and build them themselves when it is not
PAYMENTS_PREPARED = "payment_requests_prepared"
SETTLEMENTS_PREPARED = "settlements_prepared"
SHIPMENT_MESSAGES_PREPARED = "shipment_messages_prepared"
PREPARED_MARKERS = (PAYMENTS_PREPARED, SHIPMENT_MESSAGES_PREPARED, SETTLEMENTS_PREPARED)


def _stg(t: datetime) -> str:
    from backorders.cycle import staging_schema

    return staging_schema(t)


def prepare_settlements(url: str, t, rules: Rules | None = None) -> dict:
    """Build the settlements of run T into the run's staging schema before publish has written them: the captures per
    shipment request (payment methods that capture partially) and the refunds per cancellation, with their JSON
    bodies, from the run's staged rows (prepare_publish's new shipment requests, the allocations, the cancellations)
    and, by key, the earlier events of their orders. Writes nothing in oms: it runs beside publish, and
    prepare_payment_requests, after publish, adds what follows from what publish wrote (captures of whole orders,
    re-authorizations). Skipped when prepare_publish's tables are not there: prepare_payment_requests then builds
    every request from what publish wrote."""
    from backorders.cycle import PUBLISH_PREPARED, is_prepared, mark_prepared

    t = _run_time(t)
    rules = rules or load_rules()
    stg = _stg(t)
    built = None
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(_BULK_SETTINGS)
        if is_prepared(cur, stg, PUBLISH_PREPARED):
            cur.execute(f"DROP TABLE IF EXISTS {stg}.{SETTLEMENTS_PREPARED}, {stg}.money_orders, {stg}.money_events, "
                        f"{stg}.settlement_requests")
            _payment_methods(cur, rules)
            _money_events(cur, t, staged=stg)
            built = _build_requests(cur, t, rules, stg, SETTLEMENTS, table="settlement_requests")
            mark_prepared(cur, stg, SETTLEMENTS_PREPARED, t)
    log.info("prepared the settlements of %s: %s", t.isoformat(), "skipped" if built is None else built)
    return {"settlements_built": built}


def prepare_payment_requests(url: str, t, rules: Rules | None = None) -> dict:
    """Build the payment requests of run T (captures, refunds, re-authorizations, with their JSON bodies), the orders
    to re-authorize and the lapsed authorizations into the run's staging schema: the settlements prepare_settlements
    built beside publish, and the rest from what publish wrote (all of them from there when the settlements are not
    prepared). Writes nothing in oms and queues nothing: it runs after publish, beside the lifecycle, the storefront
    and the load gate, and queue_payment_requests, after the gate, only copies the rows into the outbox."""
    from backorders.cycle import mark_prepared

    t = _run_time(t)
    rules = rules or load_rules()
    stg = _stg(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(_BULK_SETTINGS)
        built = _build_payment_requests(cur, t, rules, stg)
        mark_prepared(cur, stg, PAYMENTS_PREPARED, t)
    log.info("prepared the payment requests of %s: %s", t.isoformat(), built)
    return {"payment_requests_built": built}


def queue_payment_requests(url: str, t, rules: Rules | None = None, now: datetime | None = None) -> dict:
    """Captures, refunds and re-authorizations of run T in oms.payment_requests, and the AUTHORIZATION_EXPIRED
    exceptions. Rows are PENDING, or SUPPRESSED when T is older than the delivery window. One transaction,
    set-based: the requests prepare_payment_requests built (or, when it did not run, built here first, the same way)
    are inserted, the re-authorized orders' last_authorized_at set, the lapsed authorizations' exceptions opened."""
    from backorders.cycle import is_prepared

    t = _run_time(t)
    rules = rules or load_rules()
    deliverable, status = _status(t, rules, now)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(_BULK_SETTINGS)
        stg = _stg(t)
        prepared = is_prepared(cur, stg, PAYMENTS_PREPARED)
        if not prepared:
            _build_payment_requests(cur, t, rules, None)
        src = stg if prepared else "pg_temp"
        built, inserted = _insert_requests(cur, t, status, src)
        lapsed, closed = _authorization_exceptions(cur, t, src)
    figures = {"deliverable": deliverable, "status": status, "prepared": prepared,
               "captures": built.get("CAPTURE", 0), "refunds": built.get("REFUND", 0),
               "reauthorizations": built.get("REAUTHORIZE", 0),
               "payment_requests_inserted": inserted, "authorizations_expired": lapsed,
               "authorization_exceptions_closed": closed}
    log.info("queued payment requests at %s: %s", t.isoformat(), figures)
    return figures


def _build_payment_requests(cur, t: datetime, rules: Rules, stg: str | None) -> dict:
    """The requests of T into <schema>.payment_requests, the orders to re-authorize into <schema>.payment_reauth and
    the lapsed authorizations into <schema>.payment_lapsed: the run's staging schema stg, or, with stg None, the
    session's temporary schema pg_temp (dropped at commit). Returns the requests built per kind."""
    from backorders.cycle import is_prepared

    settled = stg is not None and is_prepared(cur, stg, SETTLEMENTS_PREPARED)
    if stg is not None:
        cur.execute(f"DROP TABLE IF EXISTS {stg}.{PAYMENTS_PREPARED}, {stg}.payment_requests, {stg}.payment_reauth, "
                    f"{stg}.payment_lapsed")
    _payment_methods(cur, rules)
    if settled:     # the settlements' requests become the run's payment requests; the rest is added to them
        cur.execute(f"""CREATE TEMP VIEW mo AS SELECT * FROM {stg}.money_orders;
                        CREATE TEMP VIEW money_ev AS SELECT * FROM {stg}.money_events;
                        ALTER TABLE {stg}.settlement_requests RENAME TO payment_requests;
                        DROP TABLE {stg}.{SETTLEMENTS_PREPARED}""")
    else:
        _money_events(cur, t)
    _reauthorizations(cur, t, stg)
    if settled:
        built = _build_requests(cur, t, rules, stg, AFTER_PUBLISH, append=True)
    else:
        built = _build_requests(cur, t, rules, stg)
    _lapsed_authorizations(cur, t, stg)
    return built


def _create(stg: str | None, name: str) -> str:
    """CREATE TABLE of name in the staging schema stg, or with stg None a temporary table dropped at commit."""
    return f"CREATE TABLE {stg}.{name}" if stg else f"CREATE TEMP TABLE pg_temp.{name} ON COMMIT DROP"


def prepare_shipment_messages(url: str, t, rules: Rules | None = None) -> dict:
    """Build the request_shipment messages of run T into the run's staging schema before publish has written their
    shipment requests: from the run's new shipment requests and allocations as prepare_publish staged them, and the
    orders, lines and documents they name (the run's new ones from staging, the others from oms by key). Writes
    nothing in oms: it runs beside publish (one transaction on one core, which leaves the other idle), and
    queue_shipment_messages, after the load gate, only copies the messages into the outbox. Skipped when
    prepare_publish's tables are not there (publish then prepares them itself) or outbox.yaml disables the messages:
    queue_shipment_messages then builds the messages from what publish wrote."""
    from backorders.cycle import PUBLISH_PREPARED, is_prepared, mark_prepared

    t = _run_time(t)
    rules = rules or load_rules()
    stg = _stg(t)
    messages = None
    if rules.outbox.shipment_messages.enabled:
        with db.transaction(url) as conn, conn.cursor() as cur:
            cur.execute(_BULK_SETTINGS)
            if is_prepared(cur, stg, PUBLISH_PREPARED):
                messages = _build_shipment_messages(cur, t, stg, from_staging=True)
                mark_prepared(cur, stg, SHIPMENT_MESSAGES_PREPARED, t)
    log.info("prepared the shipment messages of %s: %s", t.isoformat(),
             "skipped" if messages is None else f"{messages} messages")
    return {"shipment_messages_built": messages}


def queue_shipment_messages(url: str, t, rules: Rules | None = None, now: datetime | None = None) -> dict:
    """The request_shipment messages of run T in oms.shipment_messages (none when outbox.yaml disables them). Rows are
    PENDING, or SUPPRESSED when T is older than the delivery window. One transaction: the messages
    prepare_shipment_messages built are inserted (or, when it did not run, they are built here first from the shipment
    requests publish wrote). Independent of queue_payment_requests: the two run at the same time."""
    from backorders.cycle import is_prepared

    t = _run_time(t)
    rules = rules or load_rules()
    deliverable, status = _status(t, rules, now)
    messages, prepared = 0, False
    if rules.outbox.shipment_messages.enabled:
        with db.transaction(url) as conn, conn.cursor() as cur:
            cur.execute(_BULK_SETTINGS)
            stg = _stg(t)
            prepared = is_prepared(cur, stg, SHIPMENT_MESSAGES_PREPARED)
            if not prepared:
                _build_shipment_messages(cur, t, None, from_staging=False)
            messages = _insert_shipment_messages(cur, t, status, stg if prepared else "pg_temp")
    figures = {"deliverable": deliverable, "status": status, "prepared": prepared, "shipment_messages": messages}
    log.info("queued shipment messages at %s: %s", t.isoformat(), figures)
    return figures


def apply_delivery_window(url: str, t, rules: Rules | None = None, now: datetime | None = None) -> dict:
    """Mark every outbox row of run T that is still PENDING and never attempted as SUPPRESSED when T is older than the
    delivery window. With queue_payment_requests and queue_shipment_messages, the only place that compares T with the
    wall clock. Idempotent; a no-op for a recent T. (Emails are queued by cycle.queue_notifications and the lifecycle
    stage: this is how they get the window too; in-process right after queueing, under Airflow at the start of
    deliver_notifications.)"""
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


# each order's payment settings: its method's, or the defaults' (method '*') when the method has none; a hash join
# (the method looked up once in a hashed set) rather than a lookup and sort per order
_PM = ("JOIN pm m ON m.method = CASE WHEN o.payment_method IN (SELECT method FROM pm) THEN o.payment_method "
       "ELSE '*' END")


def _money_events(cur, t: datetime, staged: str | None = None) -> None:
    """mo: the orders that run T touched (a shipment request or a cancellation of T) with their payment settings and
    currency digits. money_ev: every quantity event (shipment request line, cancellation) of those orders, with its
    share of the line's gross and tax amounts (and the order line's number and sku; a cancellation's reason and
    refund due date).

    Shares are cumulative differences, round(amount * cumulative qty / ordered) minus the same before the event, in
    event order (T, shipment requests before cancellations, shipment number, cancellation kind): the shares of one
    line always add up to exactly its amount, whatever the split (10.00 in three parts: 3.33, 3.34, 3.33).

    Both follow the orders of the run: the history is joined by order (index lookups once it outgrows the run), and
    of oms.orders only the columns needed are read.

    From what publish wrote (staged None: temporary tables), or, with staged the run's staging schema, before publish
    has written it (prepare_settlements, beside publish): the run's events, orders and lines from staging, the earlier
    ones from oms, into staged.money_orders and staged.money_events (temporary views mo and money_ev show them).
    The earlier ones are read as those before T, so the tables are the same whether publish has committed or not."""
    # the orders' keys first, with statistics, then their rows (by key once the history outgrows the run), and only
    # then each one's payment settings: planned in one statement, the settings were looked up for every order of oms
    if staged is None:
        keys = ("SELECT order_id FROM oms.shipment_requests WHERE requested_at = %(t)s "
                "UNION SELECT order_id FROM oms.line_cancellations WHERE run_at = %(t)s")
        orders = f"SELECT {_ORDER_FIELDS} FROM money_keys k JOIN oms.orders o USING (order_id)"
        target = "CREATE TEMP TABLE mo ON COMMIT DROP AS"
    else:
        keys = (f"SELECT order_id FROM {staged}.new_shipments UNION SELECT order_id FROM {staged}.line_results "
                f"WHERE qty_cancelled > 0 UNION SELECT order_id FROM {staged}.cancellations")
        orders = (f"SELECT {_ORDER_FIELDS} FROM money_keys k JOIN oms.orders o USING (order_id) "
                  f"WHERE o.created_run_at < %(t)s "
                  f"UNION ALL SELECT {_ORDER_FIELDS} FROM money_keys k JOIN {staged}.new_orders o USING (order_id)")
        target = f"CREATE TABLE {staged}.money_orders AS"
    cur.execute(f"CREATE TEMP TABLE money_keys ON COMMIT DROP AS {keys}; ANALYZE money_keys", {"t": t})
    cur.execute(f"""
        {target}
        SELECT o.order_id, o.store, {_ORDER_COLS}, {_DIGITS_SQL} AS digits, m.partial_capture
        FROM ({orders} OFFSET 0) o {_PM}""", {"t": t})
    if staged is None:
        cur.execute("ALTER TABLE mo ADD PRIMARY KEY (order_id); ANALYZE mo")
    else:
        cur.execute(f"ALTER TABLE {staged}.money_orders ADD PRIMARY KEY (order_id); ANALYZE {staged}.money_orders; "
                    f"CREATE TEMP VIEW mo AS SELECT * FROM {staged}.money_orders")
    earlier, earlier_c = ("", "") if staged is None else ("AND r.requested_at < %(t)s", "AND c.run_at < %(t)s")
    events = f"""
            SELECT k.order_id, l.line_id, r.requested_at AS at, 0 AS rnk, r.shipment_number AS seq, '' AS ckind,
                   r.shipment_request_id, l.quantity, k.digits, NULL::text AS reason, NULL::timestamptz AS refund_due_at
            FROM mo k JOIN oms.shipment_requests r ON r.order_id = k.order_id {earlier}
            JOIN oms.shipment_request_lines l ON l.shipment_request_id = r.shipment_request_id
            UNION ALL
            SELECT k.order_id, c.line_id, c.run_at, 1, 0, c.kind, NULL, c.quantity, k.digits, c.reason,
                   c.refund_due_at
            FROM mo k JOIN oms.line_cancellations c ON c.order_id = k.order_id {earlier_c}"""
    # the events by key lookups from the run's orders: a hash or merge join (which the planner picks when the run's
    # orders are many) reads every shipment request and order line of the history, and its cost grows with it
    cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
    if staged is None:
        lines = "oms.order_lines"
    else:
        # the earlier events and the lines of the run's orders made before T by key; then the run's own from staging
        cur.execute(f"CREATE TEMP TABLE money_raw ON COMMIT DROP AS {events}", {"t": t})
        cur.execute(f"""
            CREATE TEMP TABLE money_lines ON COMMIT DROP AS
            SELECT {_LINE_FIELDS}
            FROM mo k JOIN oms.order_lines l ON l.order_id = k.order_id AND l.created_run_at < %(t)s""", {"t": t})
        cur.execute("RESET enable_hashjoin; RESET enable_mergejoin")
        cur.execute(f"""
            INSERT INTO money_lines
            SELECT {_LINE_FIELDS} FROM {staged}.new_lines l JOIN mo k USING (order_id);
            INSERT INTO money_raw
            SELECT k.order_id, a.line_id, %(t)s, 0, s.shipment_number::integer, '',
                   'SR-' || s.order_id || '-' || s.shipment_number, a.qty::integer, k.digits, NULL, NULL
            FROM {staged}.new_shipments s JOIN mo k USING (order_id)
            JOIN {staged}.allocations a ON a.order_id = s.order_id AND a.source_code = s.source_code
            UNION ALL
            SELECT k.order_id, c.line_id, %(t)s, 1, 0, c.kind, NULL, c.qty::integer, k.digits, c.reason,
                   c.refund_due_at
            FROM (SELECT order_id, line_id, qty_cancelled AS qty, 'NOT_BACKORDERABLE' AS kind,
                         coalesce(nullif(reason, ''), 'not backorderable') AS reason, NULL::timestamptz AS refund_due_at
                  FROM {staged}.line_results WHERE qty_cancelled > 0
                  UNION ALL
                  SELECT order_id, line_id, qty, kind, reason, refund_due_at FROM {staged}.cancellations) c
            JOIN mo k USING (order_id);
            ANALYZE money_raw; ANALYZE money_lines""", {"t": t})
        events, lines = "SELECT * FROM money_raw", "money_lines"
    cur.execute(f"""
        {"CREATE TEMP TABLE money_ev ON COMMIT DROP" if staged is None else f"CREATE TABLE {staged}.money_events"} AS
        WITH e AS ({events}
        ),
        c AS (
            SELECT e.*, sum(e.quantity) OVER (PARTITION BY e.order_id, e.line_id ORDER BY e.at, e.rnk, e.seq, e.ckind
                                              ROWS UNBOUNDED PRECEDING) AS cum_after
            FROM e
        ),
        v AS (
            SELECT c.*, ol.line_number, ol.sku, ol.qty_ordered, coalesce(ol.gross_amount, 0) AS gross,
                   coalesce(ol.tax_amount, 0) AS tax
            FROM c JOIN {lines} ol ON ol.order_id = c.order_id AND ol.line_id = c.line_id
        )
        SELECT v.*,
               round(gross * cum_after / qty_ordered, digits) - round(gross * (cum_after - quantity) / qty_ordered, digits)
                   AS gross_share,
               round(tax * cum_after / qty_ordered, digits) - round(tax * (cum_after - quantity) / qty_ordered, digits)
                   AS tax_share
        FROM v""", {"t": t})
    if staged is None:
        cur.execute("RESET enable_hashjoin; RESET enable_mergejoin; ANALYZE money_ev (order_id, rnk, at)")
    else:
        cur.execute(f"ANALYZE {staged}.money_events (order_id, rnk, at); "
                    f"CREATE TEMP VIEW money_ev AS SELECT * FROM {staged}.money_events")


_ORDER_COLS = "o.currency, o.payment_method, o.payment_reference, o.gateway_id, o.transaction_id"
_LINE_FIELDS = "l.order_id, l.line_id, l.line_number, l.sku, l.qty_ordered, l.gross_amount, l.tax_amount"
_ORDER_FIELDS = "order_id, o.store, o.currency, o.payment_method, o.payment_reference, o.gateway_id, o.transaction_id"


def _iso_sql(expr: str, utc: bool = False) -> str:
    """SQL text of a timestamptz as Python's datetime.isoformat() writes it: as psycopg2 returns it (in the session's
    time zone, offset +HH:MM), or with utc in UTC (+00:00); microseconds only when there are any."""
    local = f"({expr} AT TIME ZONE 'UTC')" if utc else expr
    offset = "'+00:00'" if utc else f"to_char({expr}, 'TZH:TZM')"
    return (f"(to_char({local}, 'YYYY-MM-DD\"T\"HH24:MI:SS') "
            f"|| CASE WHEN date_trunc('second', {expr}) = {expr} THEN '' ELSE to_char({local}, '.US') END "
            f"|| {offset})")


def _reauthorizations(cur, t: datetime, stg: str | None) -> None:
    """REAUTHORIZE requests: every order with open backorder quantity whose payment method re-authorizes, when
    reauth_interval_days have passed since its last authorization (orders.last_authorized_at: the origin date, then
    each re-authorization that did not fail). The amount is what is still to be captured. The orders to re-authorize go
    to payment_reauth (_create: staging or temporary); _insert_requests sets their last_authorized_at.

    bo_orders: the orders with open backorders and a re-authorizing method; reauth: the requests of T (queued by
    _insert_requests)."""
    cur.execute(f"""
        CREATE TEMP TABLE bo_orders ON COMMIT DROP AS
        SELECT b.order_id, {_ORDER_COLS}, {_DIGITS_SQL} AS digits, coalesce(o.last_authorized_at, o.origin_date) AS last_auth,
               m.reauth_interval_days, m.authorization_validity_days, m.partial_capture
        FROM (SELECT DISTINCT order_id FROM oms.order_lines
              WHERE qty_backordered + qty_held > 0 AND qty_backordered > 0) b
        CROSS JOIN LATERAL (    -- by key, not a scan of every order of the history
            SELECT {_ORDER_COLS}, o.last_authorized_at, o.origin_date
            FROM oms.orders o WHERE o.order_id = b.order_id OFFSET 0) o {_PM}
        WHERE o.payment_method IS NOT NULL AND m.reauthorize AND o.origin_date <= %(t)s""", {"t": t})
    cur.execute("""
        CREATE TEMP TABLE reauth ON COMMIT DROP AS
        SELECT b.order_id, b.currency, b.payment_method, b.payment_reference, b.gateway_id, b.transaction_id, b.digits,
               round(sum(coalesce(l.gross_amount, 0) * (l.qty_backordered + l.qty_held
                         + CASE WHEN b.partial_capture THEN 0 ELSE l.qty_allocated + l.qty_shipped END) / l.qty_ordered),
                     b.digits) AS amount,
               round(sum(coalesce(l.tax_amount, 0) * (l.qty_backordered + l.qty_held
                         + CASE WHEN b.partial_capture THEN 0 ELSE l.qty_allocated + l.qty_shipped END) / l.qty_ordered),
                     b.digits) AS tax,
               b.last_auth, b.reauth_interval_days
        FROM bo_orders b JOIN oms.order_lines l USING (order_id)
        WHERE %(t)s >= b.last_auth + make_interval(days => b.reauth_interval_days)
        GROUP BY b.order_id, b.currency, b.payment_method, b.payment_reference, b.gateway_id, b.transaction_id,
                 b.digits, b.last_auth, b.reauth_interval_days""", {"t": t})
    reauthorized = cur.rowcount
    cur.execute(f"{_create(stg, 'payment_reauth')} AS SELECT order_id FROM reauth")
    if reauthorized:
        cur.execute("UPDATE bo_orders b SET last_auth = %(t)s FROM reauth r WHERE b.order_id = r.order_id", {"t": t})


def _refund_due_dates(cur, t: datetime, rules: Rules) -> tuple[list, list, list]:
    """T + refund_due_working_days working days on the calendar of every channel with a touched order: (stores,
    due dates, their isoformat text) for the statement of _insert_requests."""
    cur.execute("SELECT DISTINCT store FROM mo ORDER BY 1")
    days = rules.outbox.payments.refund_due_working_days
    stores = [store for store, in cur.fetchall()]
    dues = [add_working_days(t, days, rules.channel(store).timezone) for store in stores]
    return stores, dues, [d.isoformat() for d in dues]


# the kinds of request _build_requests builds: the settlements follow from the run's staged rows alone (built beside
# publish by prepare_settlements), the others from what publish wrote
SETTLEMENTS = ("partial_captures", "refunds")
AFTER_PUBLISH = ("order_captures", "reauthorizations")


def _build_requests(cur, t: datetime, rules: Rules, stg: str | None, kinds: tuple = SETTLEMENTS + AFTER_PUBLISH,
                    table: str = "payment_requests", append: bool = False) -> dict:
    """Build the payment requests of T in one statement into table (_create: staging or temporary; with append,
    inserted into the staging table that is there), with
    its body as jsonb (_insert_requests inserts the new ones): captures (per shipment request of
    T where the method captures partially: partial_captures; else one per order with nothing left to ship:
    order_captures), refunds (per cancellation row of T), re-authorizations (the reauth table). Ids are 'PR-' + the
    first 20 hex digits of the SHA-256 of the idempotency key (payment_request_id); amounts are the shares with the
    currency's digits, as text in the body.

    Returns the requests in table per kind."""
    stores, dues, due_isos = _refund_due_dates(cur, t, rules)
    # bodies are built as json (text) and parsed into jsonb once, cheaper than nesting jsonb_build_object calls
    line = ("json_build_object('shipment_request_id', e.shipment_request_id, 'line_id', e.line_id, 'sku', e.sku, "
            "'quantity', e.quantity, 'amount', e.gross_share::text, 'tax_amount', e.tax_share::text)")
    base = ("'payment_request_id', i.id, 'idempotency_key', i.key, 'kind', i.kind, 'order_id', i.order_id, "
            "'amount', i.amount::text, 'tax_amount', i.tax::text, 'currency', i.currency, "
            "'payment_method', i.payment_method, 'payment_reference', i.payment_reference, 'gateway_id', i.gateway_id, "
            "'transaction_id', i.transaction_id, 'requested_at', %(t_iso)s, 'due_at', i.due_iso, 'reason', i.reason")
    target = f"INSERT INTO {stg}.{table}" if append else f"{_create(stg, table)} AS"
    cur.execute(f"""
        {target}
        WITH due AS (
            SELECT * FROM unnest(%(stores)s::text[], %(dues)s::timestamptz[], %(due_isos)s::text[]) AS d(store, due, iso)
        ),
        cap_sr AS (          -- partial capture: one request per shipment request of T
            SELECT e.shipment_request_id, e.order_id, max(e.digits) AS digits, sum(e.gross_share) AS amount,
                   sum(e.tax_share) AS tax, json_agg({line} ORDER BY e.seq, e.line_number, e.line_id) AS lines
            FROM money_ev e JOIN mo USING (order_id)
            WHERE e.rnk = 0 AND e.at = %(t)s AND mo.partial_capture AND mo.payment_method IS NOT NULL
            GROUP BY e.shipment_request_id, e.order_id
        ),
        done AS (            -- without partial capture: the orders with nothing left to ship
            SELECT mo.order_id FROM mo
            WHERE NOT mo.partial_capture AND mo.payment_method IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM oms.order_lines l WHERE l.order_id = mo.order_id
                              AND l.qty_backordered + l.qty_held > 0)
        ),
        cap_order AS (
            SELECT e.order_id, max(e.digits) AS digits, sum(e.gross_share) AS amount, sum(e.tax_share) AS tax,
                   json_agg({line} ORDER BY e.seq, e.line_number, e.line_id) AS lines
            FROM done JOIN money_ev e USING (order_id)
            WHERE e.rnk = 0
            GROUP BY e.order_id
        ),
        req (kind, key, order_id, shipment_request_id, line_id, amount, tax, due_at, due_iso, reason, lines, currency,
             payment_method, payment_reference, gateway_id, transaction_id) AS ({_branches(kinds)}
        ),
        ids AS (
            SELECT 'PR-' || substr(encode(sha256(convert_to(req.key, 'UTF8')), 'hex'), 1, 20) AS id, req.*
            FROM req
        )
        SELECT i.id AS payment_request_id, i.key AS idempotency_key, i.order_id, i.shipment_request_id, i.line_id,
               i.kind, i.amount, i.tax AS tax_amount, i.currency, i.payment_method, i.due_at, i.reason,
               CASE i.kind
                   WHEN 'CAPTURE' THEN json_build_object({base}, 'shipment_request_id', i.shipment_request_id,
                                                         'lines', i.lines)
                   WHEN 'REFUND' THEN json_build_object({base}, 'line_id', i.line_id, 'lines', i.lines)
                   ELSE json_build_object({base}) END::jsonb AS body
        FROM ids i""",
                {"t": t, "t_iso": t.isoformat(), "stores": stores, "dues": dues, "due_isos": due_isos})
    cur.execute(f"SELECT kind, count(*) FROM {stg or 'pg_temp'}.{table} GROUP BY kind")
    return dict(cur.fetchall())


def _branches(kinds: tuple) -> str:
    """The UNION ALL of the request branches of kinds (SETTLEMENTS, AFTER_PUBLISH) for _build_requests."""
    due_col = "e.refund_due_at"     # recorded by the lifecycle for its cancellations; else the channel's due date
    branches = {
        "partial_captures": f"""
            SELECT 'CAPTURE' AS kind, 'CAPTURE/' || c.shipment_request_id AS key, c.order_id,
                   c.shipment_request_id, NULL::text AS line_id, round(c.amount, c.digits) AS amount,
                   round(c.tax, c.digits) AS tax, %(t)s::timestamptz AS due_at, %(t_iso)s AS due_iso,
                   'settlement of shipment request ' || c.shipment_request_id AS reason,
                   c.lines,
                   {_ORDER_COLS}
            FROM cap_sr c JOIN mo o USING (order_id) WHERE c.amount > 0""",
        "order_captures": f"""
            SELECT 'CAPTURE', 'CAPTURE/' || c.order_id, c.order_id, r.shipment_request_id, NULL::text,
                   round(c.amount, c.digits), round(c.tax, c.digits), %(t)s::timestamptz, %(t_iso)s,
                   'one settlement of the whole order with its last shipment request ' || r.shipment_request_id,
                   c.lines,
                   {_ORDER_COLS}
            FROM cap_order c JOIN mo o USING (order_id)
            LEFT JOIN LATERAL (SELECT r.shipment_request_id FROM oms.shipment_requests r WHERE r.order_id = c.order_id
                               ORDER BY r.shipment_number DESC LIMIT 1) r ON true
            WHERE c.amount > 0""",
        "refunds": f"""
            SELECT 'REFUND', 'REFUND/' || e.order_id || '/' || e.line_id || '/' || %(t_iso)s || '/' || e.ckind,
                   e.order_id, NULL, e.line_id, round(e.gross_share, e.digits), round(e.tax_share, e.digits),
                   coalesce({due_col}, due.due),
                   CASE WHEN {due_col} IS NOT NULL THEN {_iso_sql(due_col)} ELSE due.iso END,
                   e.ckind || ': ' || e.reason,
                   json_build_array(json_build_object(
                       'line_id', e.line_id, 'sku', e.sku, 'quantity', e.quantity,
                       'amount', round(e.gross_share, e.digits)::text, 'tax_amount', round(e.tax_share, e.digits)::text)),
                   {_ORDER_COLS}
            FROM money_ev e JOIN mo o USING (order_id)
            LEFT JOIN due ON due.store = o.store
            WHERE e.rnk = 1 AND e.at = %(t)s AND o.payment_method IS NOT NULL AND e.gross_share > 0""",
        "reauthorizations": f"""
            SELECT 'REAUTHORIZE', 'REAUTHORIZE/' || b.order_id || '/' || %(t_iso)s, b.order_id, NULL, NULL,
                   round(coalesce(b.amount, 0), b.digits), round(coalesce(b.tax, 0), b.digits), %(t)s, %(t_iso)s,
                   'open backorder; last authorized ' || {_iso_sql("b.last_auth", utc=True)}
                   || ', re-authorized every ' || b.reauth_interval_days || ' days',
                   NULL::json,
                   b.currency, b.payment_method, b.payment_reference, b.gateway_id, b.transaction_id
            FROM reauth b""",
    }
    return "\n            UNION ALL".join(branches[k] for k in kinds)


def _insert_requests(cur, t: datetime, status: str, src: str) -> tuple[dict, int]:
    """Insert the requests of src.payment_requests (the staging schema, or pg_temp) that are not in the outbox yet
    (ON CONFLICT (idempotency_key) DO NOTHING) with the status, and set last_authorized_at of the orders of
    src.payment_reauth. Returns (requests built per kind, rows inserted)."""
    cur.execute(f"UPDATE oms.orders o SET last_authorized_at = %(t)s FROM {src}.payment_reauth r "
                "WHERE o.order_id = r.order_id", {"t": t})
    cur.execute(f"""
        INSERT INTO oms.payment_requests (payment_request_id, idempotency_key, order_id, shipment_request_id,
            line_id, kind, amount, tax_amount, currency, payment_method, due_at, created_at, status, reason, body)
        SELECT payment_request_id, idempotency_key, order_id, shipment_request_id, line_id, kind, amount, tax_amount,
               currency, payment_method, due_at, %(t)s, %(status)s, reason, body
        FROM {src}.payment_requests
        ON CONFLICT (idempotency_key) DO NOTHING""", {"t": t, "status": status})
    inserted = cur.rowcount
    cur.execute(f"SELECT kind, count(*) FROM {src}.payment_requests GROUP BY kind")
    return dict(cur.fetchall()), inserted


def _lapsed_authorizations(cur, t: datetime, stg: str | None) -> None:
    """payment_lapsed (_create: staging or temporary): the orders with open backorder quantity whose last
    authorization's validity ended before T and was not renewed in this run."""
    cur.execute(f"""
        {_create(stg, 'payment_lapsed')} AS
        SELECT order_id, payment_method, last_auth, authorization_validity_days, reauth_interval_days,
               last_auth + make_interval(days => authorization_validity_days) AS expired_at,
               'AUTHORIZATION_EXPIRED:' || order_id || ':' || to_char(last_auth AT TIME ZONE 'UTC', {_ISO}) AS cause_key
        FROM bo_orders
        WHERE last_auth + make_interval(days => authorization_validity_days) < %(t)s""", {"t": t})


def _authorization_exceptions(cur, t: datetime, src: str) -> tuple[int, int]:
    """AUTHORIZATION_EXPIRED (severity high): an order with open backorder quantity whose last authorization's
    validity ended before T and was not renewed in this run (authorization_validity_days shorter than
    reauth_interval_days, or a failed re-authorization). One exception per lapsed authorization; it closes by itself
    in the run that renews the authorization or leaves the order without backorders."""
    cur.execute(f"""
        INSERT INTO oms.exceptions (exception_id, order_id, line_id, kind, severity, opened_at, details, cause_key)
        SELECT 'EX-' || substr(md5(cause_key), 1, 16), order_id, NULL, 'AUTHORIZATION_EXPIRED', 'high', %(t)s,
               'the ' || payment_method || ' authorization of ' || to_char(last_auth AT TIME ZONE 'UTC', {_ISO})
               || ' expired on ' || to_char(expired_at AT TIME ZONE 'UTC', {_ISO}) || ' (valid '
               || authorization_validity_days || ' days) and was not renewed (re-authorization every '
               || reauth_interval_days || ' days); the order still has backorders',
               cause_key
        FROM {src}.payment_lapsed
        ON CONFLICT (cause_key) DO NOTHING""", {"t": t})
    opened = cur.rowcount
    cur.execute(f"""
        UPDATE oms.exceptions e SET closed_at = %(t)s
        WHERE e.kind = 'AUTHORIZATION_EXPIRED' AND e.closed_at IS NULL AND e.opened_at <= %(t)s
          AND NOT EXISTS (SELECT 1 FROM {src}.payment_lapsed l WHERE l.cause_key = e.cause_key)""", {"t": t})
    return opened, cur.rowcount


def _build_shipment_messages(cur, t: datetime, stg: str | None, from_staging: bool) -> int:
    """One magento.logistics.warehouse_management.request_shipment message (JSON-RPC 2.0) per shipment request of T,
    into shipment_messages (_create: the staging schema stg, or with stg None a temporary table): the request, the
    order's shipping method and ship-by date, the shipping address of its lines, and its lines. Returns their number.

    from_staging: the requests are the run's new ones as prepare_publish staged them ({stg}.new_shipments and
    {stg}.allocations, the rows publish writes), and the orders, documents and lines the run created are read from
    staging, the others from oms (before publish has written the run). Otherwise the requests are those of T that
    publish wrote and have no message yet, read from oms. The messages are the same either way."""
    # sr (the requests), srl (their lines, with their order lines' number and product name) and so (their orders, with
    # the addresses and lines of the order documents) in temp tables with statistics: the tables' own statistics may
    # predate this run's rows (the planner would expect a handful and could join them by a nested loop over every
    # line). Orders, documents and lines are read by key, in key order (a join would read every order, document and
    # line of the history), a document decompressed once per order: OFFSET 0 keeps the planner from repeating
    # expressions. When from_staging, the run's own orders, documents and lines come from staging (a hash join of the
    # run's few new ones) and only the others are looked up in oms (the lookup's one-time filter skips them).
    if from_staging:
        cur.execute(f"""
            CREATE TEMP TABLE sr ON COMMIT DROP AS
            SELECT 'SR-' || s.order_id || '-' || s.shipment_number AS shipment_request_id, s.order_id, s.source_code,
                   s.shipment_number
            FROM {stg}.new_shipments s
            ORDER BY 1;
            ANALYZE sr;
            CREATE TEMP TABLE srl ON COMMIT DROP AS
            SELECT k.shipment_request_id, k.order_id, k.line_id, k.sku, k.quantity, ol.line_number, ol.product_name
            FROM (SELECT 'SR-' || s.order_id || '-' || s.shipment_number AS shipment_request_id, a.order_id, a.line_id,
                         a.sku, a.qty AS quantity, n.line_number AS new_number, n.product_name AS new_name,
                         n.line_id IS NOT NULL AS is_new
                  FROM {stg}.allocations a JOIN {stg}.new_shipments s USING (order_id, source_code)
                  LEFT JOIN {stg}.new_lines n ON n.order_id = a.order_id AND n.line_id = a.line_id
                  ORDER BY a.order_id, a.line_id) k
            CROSS JOIN LATERAL (
                SELECT k.new_number AS line_number, k.new_name AS product_name WHERE k.is_new
                UNION ALL
                SELECT ol.line_number, ol.product_name FROM oms.order_lines ol
                WHERE NOT k.is_new AND ol.order_id = k.order_id AND ol.line_id = k.line_id OFFSET 0) ol;
            CREATE TEMP TABLE so ON COMMIT DROP AS
            SELECT k.order_id, o.store, o.shipping_method, o.ship_by_date,
                   CASE WHEN jsonb_typeof(r.addresses) = 'array' THEN r.addresses ELSE '[]'::jsonb END AS addresses,
                   CASE WHEN jsonb_typeof(r.lines) = 'array' THEN r.lines ELSE '[]'::jsonb END AS raw_lines
            FROM (SELECT k.order_id, n.store AS new_store, n.shipping_method AS new_method,
                         n.ship_by_date AS new_ship_by, n.order_id IS NOT NULL AS is_new, d.raw_order AS new_doc,
                         d.order_id IS NOT NULL AS new_doc_found
                  FROM (SELECT DISTINCT order_id FROM sr) k
                  LEFT JOIN {stg}.new_orders n ON n.order_id = k.order_id
                  LEFT JOIN {stg}.new_order_documents d ON d.order_id = k.order_id
                  ORDER BY 1) k
            CROSS JOIN LATERAL (
                SELECT k.new_store AS store, k.new_method AS shipping_method, k.new_ship_by AS ship_by_date
                WHERE k.is_new
                UNION ALL
                SELECT o.store, o.shipping_method, o.ship_by_date FROM oms.orders o
                WHERE NOT k.is_new AND o.order_id = k.order_id OFFSET 0) o
            CROSS JOIN LATERAL (
                SELECT k.new_doc -> 'addresses' AS addresses, k.new_doc -> 'lines' AS lines WHERE k.new_doc_found
                UNION ALL
                SELECT d.raw_order -> 'addresses', d.raw_order -> 'lines' FROM oms.order_documents d
                WHERE NOT k.new_doc_found AND d.order_id = k.order_id OFFSET 0) r;
            ALTER TABLE so ADD PRIMARY KEY (order_id);
            ANALYZE so (order_id); ANALYZE srl""")
    else:
        cur.execute("""
            CREATE TEMP TABLE sr ON COMMIT DROP AS
            SELECT r.shipment_request_id, r.order_id, r.source_code, r.shipment_number
            FROM oms.shipment_requests r
            WHERE r.requested_at = %(t)s
              AND NOT EXISTS (SELECT 1 FROM oms.shipment_messages m
                              WHERE m.idempotency_key = 'REQUEST_SHIPMENT/' || r.shipment_request_id)
            ORDER BY r.shipment_request_id;     -- key order: the lookups of its lines walk the index in order
            ANALYZE sr;
            CREATE TEMP TABLE srl ON COMMIT DROP AS
            SELECT sr.shipment_request_id, l.order_id, l.line_id, l.sku, l.quantity, ol.line_number, ol.product_name
            FROM sr
            CROSS JOIN LATERAL (SELECT l.order_id, l.line_id, l.sku, l.quantity FROM oms.shipment_request_lines l
                                WHERE l.shipment_request_id = sr.shipment_request_id OFFSET 0) l
            CROSS JOIN LATERAL (SELECT ol.line_number, ol.product_name FROM oms.order_lines ol
                                WHERE ol.order_id = l.order_id AND ol.line_id = l.line_id OFFSET 0) ol;
            CREATE TEMP TABLE so ON COMMIT DROP AS
            SELECT k.order_id, o.store, o.shipping_method, o.ship_by_date,
                   CASE WHEN jsonb_typeof(r.addresses) = 'array' THEN r.addresses ELSE '[]'::jsonb END AS addresses,
                   CASE WHEN jsonb_typeof(r.lines) = 'array' THEN r.lines ELSE '[]'::jsonb END AS raw_lines
            FROM (SELECT DISTINCT order_id FROM sr ORDER BY 1) k
            CROSS JOIN LATERAL (SELECT o.store, o.shipping_method, o.ship_by_date FROM oms.orders o
                                WHERE o.order_id = k.order_id OFFSET 0) o
            CROSS JOIN LATERAL (SELECT d.raw_order -> 'addresses' AS addresses, d.raw_order -> 'lines' AS lines
                                FROM oms.order_documents d WHERE d.order_id = k.order_id OFFSET 0) r;
            ALTER TABLE so ADD PRIMARY KEY (order_id);
            ANALYZE so (order_id); ANALYZE srl""", {"t": t})
    if stg:
        cur.execute(f"DROP TABLE IF EXISTS {stg}.{SHIPMENT_MESSAGES_PREPARED}, {stg}.shipment_messages")
    cur.execute(f"""
        {_create(stg, 'shipment_messages')} AS
        WITH
        -- the body is built and stored as json (text), as sent: nested jsonb_build_object calls would re-serialize the
        -- lines at every level
        ln AS (
            SELECT l.shipment_request_id,
                   json_agg(json_build_object('line_id', l.line_id, 'line_number', l.line_number, 'sku', l.sku,
                                              'product_name', l.product_name, 'quantity', l.quantity)
                            ORDER BY l.line_number) AS lines,
                   (array_agg(l.line_id ORDER BY l.line_number))[1] AS first_line
            FROM srl l GROUP BY l.shipment_request_id
        ),
        x AS MATERIALIZED (
            SELECT sr.*, ln.lines, o.store, o.shipping_method, o.ship_by_date, o.addresses,
                   (SELECT e ->> 'shipping_address_reference' FROM jsonb_array_elements(o.raw_lines) e
                    WHERE e ->> 'id' = ln.first_line LIMIT 1) AS addr_ref
            FROM sr LEFT JOIN ln USING (shipment_request_id)
            JOIN so o ON o.order_id = sr.order_id
        )
        SELECT 'SM-' || x.shipment_request_id AS message_id, 'REQUEST_SHIPMENT/' || x.shipment_request_id AS idempotency_key,
               x.shipment_request_id, x.order_id, x.source_code,
               json_build_object(
                   'jsonrpc', '2.0', 'id', 'SM-' || x.shipment_request_id, 'method', %(method)s,
                   'params', json_build_object('shipment_request', json_build_object(
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
                       'lines', x.lines))) AS body,
               regexp_replace(x.shipment_request_id, '[^A-Za-z0-9._-]', '_', 'g') || '.json' AS file_name
        FROM x
        ORDER BY x.shipment_request_id          -- key order: the outbox's indexes take the rows page by page""",
                {"t": t, "method": REQUEST_SHIPMENT})
    return cur.rowcount


def _insert_shipment_messages(cur, t: datetime, status: str, src: str) -> int:
    """Insert the messages of src.shipment_messages (the staging schema, or pg_temp) that are not in the outbox yet."""
    cur.execute(f"""
        INSERT INTO oms.shipment_messages (message_id, idempotency_key, shipment_request_id, order_id, source_code,
                                           created_at, body, file_name, status)
        SELECT message_id, idempotency_key, shipment_request_id, order_id, source_code, %(t)s, body, file_name,
               %(status)s
        FROM {src}.shipment_messages
        ORDER BY shipment_request_id
        ON CONFLICT (idempotency_key) DO NOTHING""", {"t": t, "status": status})
    return cur.rowcount
