"""operations and bi: the run lock, a comment on every oms column, views for BI, and the read-only role backorders_bi.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# -------------------------------------------------------------------------------- the run lock (a lease, one row)
RUN_LOCK = r"""
CREATE TABLE IF NOT EXISTS oms.run_lock (
    lock_name      text PRIMARY KEY DEFAULT 'backorder_cycle',
    held_by_run_at timestamptz,
    airflow_run_id text,
    acquired_at    timestamptz
);
COMMENT ON TABLE oms.run_lock IS 'The lease that lets one backorder_cycle run at a time work on this database: taken when a run opens, given back when it finishes or fails. All null: free.';
COMMENT ON COLUMN oms.run_lock.lock_name IS 'Name of the lock; one row, backorder_cycle.';
COMMENT ON COLUMN oms.run_lock.held_by_run_at IS 'T of the run holding the lease; null when free.';
COMMENT ON COLUMN oms.run_lock.airflow_run_id IS 'Holder: the Airflow run id, or inprocess:<host>:<pid> for a run started outside Airflow.';
COMMENT ON COLUMN oms.run_lock.acquired_at IS 'Wall-clock time the lease was taken (a lease older than the TTL is taken over).';

-- the stock feed watcher (dags/stock_feed_watch.py) asks for the rows that landed after its watermark
CREATE INDEX IF NOT EXISTS stock_levels_landed ON landing.stock_levels ((coalesce(received_at, as_of)));
"""

# -------------------------------------------------------------------------------- column comments
# Set only where a column has none yet, so that a comment written by an earlier migration is kept.
COLUMN_COMMENTS: dict[str, dict[str, str]] = {
    "pipeline_runs": {
        "run_id": "cycle_<T>: the run's id, derived from T.",
        "run_at": "T, the run time: its logical date, or for a manual or stock-triggered run the time it was queued.",
        "started_at": "Wall-clock start of the latest execution of T.",
        "finished_at": "Wall-clock end of the latest execution of T.",
        "status": "RUNNING, SUCCESS or FAILED.",
        "airflow_run_id": "The Airflow run (dag_run.run_id) that executed T; null for a run outside Airflow.",
        "messages_in": "Order messages read by the run (received up to T, not consumed before).",
        "orders_created": "New orders accepted by the run.",
        "lines_created": "New order lines accepted by the run.",
        "messages_quarantined": "Messages the run put in oms.quarantine.",
        "messages_duplicate": "Messages that repeated an order already received with the same content.",
        "demand_lines": "Lines the run tried to allocate: new lines and every line waiting before the run.",
        "lines_allocated": "Lines that got some quantity in this run.",
        "lines_backordered": "Lines left with backordered quantity after this run.",
        "lines_held": "Lines left with held quantity after this run.",
        "lines_cancelled": "Lines with quantity cancelled in this run.",
        "qty_allocated": "Units allocated in this run.",
        "shipment_requests": "Shipment requests created in this run.",
        "shipments_confirmed": "Shipment confirmations applied in this run.",
        "emails_queued": "Customer emails queued in oms.notifications by this run.",
        "exceptions_opened": "Exceptions opened by this run.",
        "exceptions_closed": "Exceptions closed by this run.",
        "stage_counts": "Figures and timings per stage (JSON), as the tasks returned them.",
        "dq_results": "Data-quality check results of the run (JSON list: check, failing rows, blocking).",
        "error": "Why the run failed; null when it did not.",
    },
    "consumed_messages": {
        "message_id": "landing.order_messages.message_id.",
        "run_at": "T of the run that consumed the message.",
        "outcome": "PROCESSED (became an order), QUARANTINED, or DUPLICATE (same order, same content as before).",
        "order_id": "The order the message carried, when it could be read.",
    },
    "orders": {
        "order_id": "Order id from the channel (params.order.id).",
        "store": "Sales channel (store code); selects the channel rules.",
        "origin_date": "When the customer placed the order.",
        "customer_id": "Customer id in the channel.",
        "customer_type": "Customer type from the message (e.g. B2C, B2B).",
        "customer_segment": "Customer segment from the message (used by the priority rules).",
        "customer_email": "Where customer emails go.",
        "customer_name": "Name used in customer emails.",
        "language": "Language of customer emails (e.g. en_US, de_DE).",
        "country_code": "Shipping country.",
        "payment_method": "Payment method code (payment_methods.yaml).",
        "payment_reference": "Reference of the payment at the payment service.",
        "currency": "ISO 4217 currency of the amounts.",
        "authorized_amount": "Amount authorized at checkout.",
        "authorization_status": "Authorization status from the message.",
        "gateway_id": "Payment gateway.",
        "transaction_id": "Authorization transaction id.",
        "last_authorized_at": "When the payment was last authorized (origin date, or the latest re-authorization).",
        "shipping_method": "Shipping method code.",
        "priority_tier": "Priority tier from priority.yaml; lower tiers get scarce stock first.",
        "promised_date": "Delivery date promised at checkout, if any.",
        "ship_by_date": "FTC ship-by date: the promised date, or origin_date plus the channel's ship_promise_days.",
        "status": "Aggregate of the lines: BACKORDERED, ON_HOLD, ALLOCATED, PARTIALLY_SHIPPED, SHIPPED or CANCELLED.",
        "message_id": "The landing.order_messages row the order came from.",
        "content_hash": "Hash of the order content: a repeat with the same hash is a duplicate, another is a conflict.",
        "order_attributes": "Custom attributes of the order (JSON).",
        "raw_order": "params.order exactly as received, with every field the pipeline does not use.",
        "created_run_at": "T of the run that accepted the order.",
        "updated_at": "T of the latest run that changed the order.",
    },
    "order_lines": {
        "order_id": "The order.",
        "line_id": "Line id from the message (unique within the order).",
        "line_number": "Position of the line in the order.",
        "sku": "Stock keeping unit.",
        "product_name": "Product name as ordered.",
        "qty_ordered": "Units ordered; = allocated + shipped + backordered + held + cancelled.",
        "qty_allocated": "Units committed to a shipment request and not yet shipped.",
        "qty_shipped": "Units confirmed shipped by logistics.",
        "qty_backordered": "Units waiting for stock (the line is a backorder).",
        "qty_held": "Units held: waiting for the rest of the order, or in stock but not to be allocated yet.",
        "qty_cancelled": "Units cancelled (see oms.line_cancellations).",
        "status": "NEW, BACKORDERED, ON_HOLD, ALLOCATED, PARTIALLY_SHIPPED, SHIPPED or CANCELLED.",
        "is_backorder": "The backorder label: true while some quantity waits for stock.",
        "backorderable": "Whether the line may wait for stock.",
        "backorder_decided_by": "Which rule decided whether the line may be backordered: line_attribute, catalog or channel.",
        "backordered_since": "T of the first run that could not allocate the line, while it is a backorder.",
        "auto_cancel_at": "When the line is cancelled if still waiting (origin plus the channel's auto_cancel_after_days).",
        "wait_reason": "Why the line waits, in words for a support agent.",
        "gross_amount": "Line amount with tax.",
        "net_amount": "Line amount without tax.",
        "tax_amount": "Tax of the line.",
        "promise_delivery_date": "Delivery date promised for the line, if any.",
        "created_run_at": "T of the run that accepted the line.",
        "updated_at": "T of the latest run that changed the line.",
    },
    "shipment_requests": {
        "shipment_request_id": "SR-<order>-<n>, n counting the order's shipments.",
        "order_id": "The order.",
        "source_code": "The stock source (warehouse) that ships it.",
        "shipment_number": "n: the order's n-th shipment request.",
        "requested_at": "T of the run that created the request.",
        "status": "REQUESTED, or SHIPPED once logistics confirmed it.",
        "shipped_at": "When logistics handed it to the carrier.",
        "shipped_run_at": "T of the run that applied the confirmation.",
    },
    "shipment_request_lines": {
        "shipment_request_id": "The shipment request.",
        "order_id": "The order of the line.",
        "line_id": "The order line.",
        "sku": "SKU of the line.",
        "quantity": "Units of the line committed to this request's source.",
    },
    "backorder_attempts": {
        "order_id": "The order of the line.",
        "line_id": "The order line.",
        "checked_at": "T of the run that tried to allocate the line.",
        "qty_needed": "Open units of the line before the run.",
        "qty_available": "Units of the SKU the line could see at its sources (after safety stock and earlier lines).",
        "qty_allocated": "Units allocated by the run.",
        "qty_backordered": "Units left waiting for stock.",
        "qty_held": "Units held.",
        "qty_cancelled": "Units cancelled by the run.",
        "outcome": "ALLOCATED, PARTIAL, NO_STOCK, HELD, CANCELLED_NOT_BACKORDERABLE, ...",
        "reason": "Why the line got what it got, in words.",
    },
    "line_cancellations": {
        "order_id": "The order of the line.",
        "line_id": "The order line.",
        "run_at": "T of the run that cancelled the quantity.",
        "quantity": "Units cancelled.",
        "kind": "NOT_BACKORDERABLE, AUTO_CANCEL, CUSTOMER or FTC.",
        "reason": "Why, in words (as told to the customer).",
    },
    "exceptions": {
        "exception_id": "Id derived from the cause.",
        "order_id": "The order concerned, if any.",
        "line_id": "The line concerned, if any.",
        "kind": "Kind of exception (e.g. REJECTED_MESSAGE, LONG_BACKORDER, ...).",
        "severity": "low, medium or high.",
        "opened_at": "T of the run that opened it.",
        "closed_at": "T of the run in which its cause was gone; null while open.",
        "details": "What happened, in words for the person who handles it.",
        "cause_key": "The cause: never opened twice for the same cause.",
    },
    "notifications": {
        "notification_id": "Id derived from the idempotency key.",
        "idempotency_key": "<kind>:<order>:<T>: the email is delivered at most once.",
        "order_id": "The order the email is about.",
        "kind": "BACKORDER_NOTICE, CANCELLATION_NOTICE, DELAY_OPTION_NOTICE, ...",
        "recipient": "Email address.",
        "subject": "Subject line.",
        "body": "Plain-text body.",
        "body_html": "HTML body.",
        "language": "Language the email was rendered in.",
        "created_at": "T of the run that queued it.",
        "status": "PENDING, SENT or FAILED.",
        "sent_at": "When it was delivered.",
        "attempts": "Delivery attempts so far.",
        "last_error": "Error of the latest failed attempt.",
    },
    "notification_lines": {
        "notification_id": "The email.",
        "kind": "Kind of the email.",
        "order_id": "The order of the line.",
        "line_id": "A line the email told the customer about.",
    },
    "payment_requests": {
        "payment_request_id": "Id derived from the idempotency key.",
        "idempotency_key": "Key the payment service deduplicates on.",
        "order_id": "The order.",
        "shipment_request_id": "The shipment a capture is for, if any.",
        "kind": "REAUTHORIZE, CAPTURE or REFUND.",
        "amount": "Amount to authorize, capture or refund.",
        "currency": "ISO 4217 currency.",
        "due_at": "When it must be done (e.g. refund due date).",
        "created_at": "T of the run that wrote it.",
        "status": "PENDING, SENT, ...",
        "sent_at": "When it was sent to the payment service.",
        "attempts": "Delivery attempts so far.",
        "response": "The payment service's answer.",
    },
    "delay_notices": {
        "order_id": "The order.",
        "kind": "FIRST or RENEWED.",
        "sent_at": "T of the run that sent the notice.",
        "original_ship_by": "The order's ship-by date.",
        "revised_ship_by": "Revised ship-by date told to the buyer; null: indefinite.",
        "consent": "IMPLIED, EXPRESS or NONE.",
        "decided_at": "T of the run that recorded the consent.",
    },
    "storefront_availability": {
        "store": "Sales channel.",
        "sku": "SKU.",
        "available_qty": "Units the channel can still sell from stock.",
        "backorderable": "Whether the channel takes backorders of the SKU.",
        "message": "What the storefront shows: In stock, the channel's availability message, or Out of stock.",
        "updated_at": "T of the run that computed it.",
    },
    "allocation_queue": {
        "order_id": "The order.",
        "line_id": "The waiting line.",
        "line_number": "Position of the line in the order.",
        "store": "Sales channel.",
        "sku": "SKU of the line.",
        "product_name": "Product name.",
        "qty_ordered": "Units ordered.",
        "qty_allocated": "Units allocated so far.",
        "qty_shipped": "Units shipped.",
        "qty_backordered": "Units waiting for stock.",
        "qty_held": "Units held.",
        "qty_cancelled": "Units cancelled.",
        "label": "BACKORDER (some quantity waits for stock) or ON HOLD.",
        "status": "Line status.",
        "backorder_decided_by": "Which rule made the line backorderable or not.",
        "backordered_since": "T of the first run that could not allocate it.",
        "origin_date": "When the order was placed.",
        "age_days": "Whole days from the order to the latest successful run.",
        "attempts": "Allocation attempts so far (oms.backorder_attempts).",
        "last_attempt_at": "T of the latest attempt.",
        "last_outcome": "Outcome of the latest attempt.",
        "auto_cancel_at": "When it is cancelled if still waiting.",
        "wait_reason": "Why the line waits, in words.",
        "ship_by_date": "FTC ship-by date of the order.",
        "priority_tier": "Priority tier of the order.",
    },
    "exception_queue": {
        "exception_id": "The exception.",
        "order_id": "The order concerned, if any.",
        "line_id": "The line concerned, if any.",
        "kind": "Kind of exception.",
        "severity": "low, medium or high.",
        "opened_at": "T of the run that opened it.",
        "closed_at": "Always null here (open exceptions only).",
        "details": "What happened, in words.",
        "cause_key": "The cause (unique).",
        "store": "Sales channel of the order.",
    },
    "quarantine": {
        "quarantine_id": "Q-<source>-<ref>.",
        "source": "Landing table the input came from.",
        "source_ref": "Its key there (e.g. the message id).",
        "received_at": "When the input was received.",
        "reason": "Precisely why it could not be used.",
        "raw": "The input, whole.",
        "run_at": "T of the run that quarantined it.",
    },
}

BI_VIEWS = r"""
CREATE OR REPLACE VIEW oms.backorders_by_sku_age AS
WITH asof AS (SELECT coalesce(max(run_at), now()) AS t FROM oms.pipeline_runs WHERE status = 'SUCCESS'),
lines AS (
    SELECT l.sku, l.order_id, l.qty_backordered, l.backordered_since,
           extract(epoch FROM (a.t - l.backordered_since)) / 86400.0 AS age_days, a.t
    FROM oms.order_lines l CROSS JOIN asof a
    WHERE l.qty_backordered > 0
)
SELECT sku,
       CASE WHEN age_days < 1 THEN '0-1 d' WHEN age_days < 3 THEN '1-3 d' WHEN age_days < 7 THEN '3-7 d'
            WHEN age_days < 14 THEN '7-14 d' ELSE '14+ d' END AS age_bucket,
       CASE WHEN age_days < 1 THEN 1 WHEN age_days < 3 THEN 2 WHEN age_days < 7 THEN 3
            WHEN age_days < 14 THEN 4 ELSE 5 END AS age_bucket_order,
       count(*)::integer AS lines,
       count(DISTINCT order_id)::integer AS orders,
       sum(qty_backordered)::bigint AS qty_backordered,
       min(backordered_since) AS oldest_backordered_since,
       max(t) AS as_of
FROM lines
GROUP BY 1, 2, 3;
COMMENT ON VIEW oms.backorders_by_sku_age IS 'Backordered lines and units per SKU and age bucket (age since the line became a backorder, at the latest successful run).';
COMMENT ON COLUMN oms.backorders_by_sku_age.sku IS 'SKU.';
COMMENT ON COLUMN oms.backorders_by_sku_age.age_bucket IS 'Age since backordered_since: 0-1 d, 1-3 d, 3-7 d, 7-14 d, 14+ d.';
COMMENT ON COLUMN oms.backorders_by_sku_age.age_bucket_order IS 'Sort key of the bucket (1 = youngest).';
COMMENT ON COLUMN oms.backorders_by_sku_age.lines IS 'Backordered lines.';
COMMENT ON COLUMN oms.backorders_by_sku_age.orders IS 'Orders with such lines.';
COMMENT ON COLUMN oms.backorders_by_sku_age.qty_backordered IS 'Backordered units.';
COMMENT ON COLUMN oms.backorders_by_sku_age.oldest_backordered_since IS 'Oldest backordered_since in the bucket.';
COMMENT ON COLUMN oms.backorders_by_sku_age.as_of IS 'T the ages are measured at (the latest successful run).';

CREATE OR REPLACE VIEW oms.fill_rate_per_run AS
SELECT r.run_at, r.run_id, r.status, r.demand_lines, r.lines_allocated, r.lines_backordered, r.lines_held,
       r.lines_cancelled, r.qty_allocated,
       round(r.lines_allocated::numeric / nullif(r.demand_lines, 0), 4) AS line_fill_rate,
       coalesce(a.waiting_lines, 0)::integer AS waiting_lines,
       coalesce(a.waiting_lines_filled, 0)::integer AS waiting_lines_filled,
       round(a.waiting_lines_filled::numeric / nullif(a.waiting_lines, 0), 4) AS backorder_fill_rate,
       coalesce(a.qty_needed, 0)::bigint AS waiting_qty_needed,
       coalesce(a.qty_filled, 0)::bigint AS waiting_qty_filled,
       round(a.qty_filled::numeric / nullif(a.qty_needed, 0), 4) AS backorder_qty_fill_rate
FROM oms.pipeline_runs r
LEFT JOIN (
    SELECT checked_at, count(*) AS waiting_lines, count(*) FILTER (WHERE qty_allocated > 0) AS waiting_lines_filled,
           sum(qty_needed) AS qty_needed, sum(qty_allocated) AS qty_filled
    FROM oms.backorder_attempts GROUP BY checked_at
) a ON a.checked_at = r.run_at;
COMMENT ON VIEW oms.fill_rate_per_run IS 'Fill rate of every run: share of demand lines that got stock, and of the attempts log (lines that waited, or new lines not allocated in full) how many got stock.';
COMMENT ON COLUMN oms.fill_rate_per_run.run_at IS 'T of the run.';
COMMENT ON COLUMN oms.fill_rate_per_run.run_id IS 'cycle_<T>.';
COMMENT ON COLUMN oms.fill_rate_per_run.status IS 'Run status.';
COMMENT ON COLUMN oms.fill_rate_per_run.demand_lines IS 'Lines the run tried to allocate.';
COMMENT ON COLUMN oms.fill_rate_per_run.lines_allocated IS 'Lines that got some quantity.';
COMMENT ON COLUMN oms.fill_rate_per_run.lines_backordered IS 'Lines left with backordered quantity.';
COMMENT ON COLUMN oms.fill_rate_per_run.lines_held IS 'Lines left with held quantity.';
COMMENT ON COLUMN oms.fill_rate_per_run.lines_cancelled IS 'Lines with quantity cancelled.';
COMMENT ON COLUMN oms.fill_rate_per_run.qty_allocated IS 'Units allocated.';
COMMENT ON COLUMN oms.fill_rate_per_run.line_fill_rate IS 'lines_allocated / demand_lines.';
COMMENT ON COLUMN oms.fill_rate_per_run.waiting_lines IS 'Lines in the attempts log of the run (waited before it, or new and not allocated in full).';
COMMENT ON COLUMN oms.fill_rate_per_run.waiting_lines_filled IS 'Of those, lines that got some quantity.';
COMMENT ON COLUMN oms.fill_rate_per_run.backorder_fill_rate IS 'waiting_lines_filled / waiting_lines.';
COMMENT ON COLUMN oms.fill_rate_per_run.waiting_qty_needed IS 'Units those lines needed.';
COMMENT ON COLUMN oms.fill_rate_per_run.waiting_qty_filled IS 'Units they got.';
COMMENT ON COLUMN oms.fill_rate_per_run.backorder_qty_fill_rate IS 'waiting_qty_filled / waiting_qty_needed.';

CREATE OR REPLACE VIEW oms.exceptions_per_kind AS
WITH asof AS (SELECT coalesce(max(run_at), now()) AS t FROM oms.pipeline_runs WHERE status = 'SUCCESS')
SELECT e.kind, e.severity,
       count(*) FILTER (WHERE e.closed_at IS NULL)::integer AS open,
       count(*) FILTER (WHERE e.closed_at IS NOT NULL)::integer AS closed,
       count(*)::integer AS total,
       min(e.opened_at) FILTER (WHERE e.closed_at IS NULL) AS oldest_open_at,
       round((avg(extract(epoch FROM (a.t - e.opened_at))) FILTER (WHERE e.closed_at IS NULL) / 86400.0)::numeric, 2)
           AS avg_open_age_days,
       round((avg(extract(epoch FROM (e.closed_at - e.opened_at))) FILTER (WHERE e.closed_at IS NOT NULL)
              / 86400.0)::numeric, 2) AS avg_days_to_close
FROM oms.exceptions e CROSS JOIN asof a
GROUP BY e.kind, e.severity;
COMMENT ON VIEW oms.exceptions_per_kind IS 'Exceptions per kind and severity: open, closed, oldest open, average age of the open ones and time to close.';
COMMENT ON COLUMN oms.exceptions_per_kind.kind IS 'Kind of exception.';
COMMENT ON COLUMN oms.exceptions_per_kind.severity IS 'low, medium or high.';
COMMENT ON COLUMN oms.exceptions_per_kind.open IS 'Open exceptions.';
COMMENT ON COLUMN oms.exceptions_per_kind.closed IS 'Closed exceptions.';
COMMENT ON COLUMN oms.exceptions_per_kind.total IS 'All exceptions ever opened.';
COMMENT ON COLUMN oms.exceptions_per_kind.oldest_open_at IS 'T the oldest open one was opened.';
COMMENT ON COLUMN oms.exceptions_per_kind.avg_open_age_days IS 'Average age of the open ones at the latest successful run, in days.';
COMMENT ON COLUMN oms.exceptions_per_kind.avg_days_to_close IS 'Average days from opened to closed.';
"""

# The read-only role for BI tools: a group role (NOLOGIN) with USAGE on oms and SELECT on its tables and views, now and
# later (default privileges of the role that runs the migrations). Operators create a LOGIN user in it (docs/schema.md).
# Creating a role needs CREATEROLE: without it the migration goes on and says so.
BI_ROLE = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backorders_bi') THEN
        CREATE ROLE backorders_bi NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;   -- created at the same moment by another database's migration
    WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot create role backorders_bi (no CREATEROLE): ask the database administrator to create it, then migrate again';
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backorders_bi') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO backorders_bi', current_database());
        GRANT USAGE ON SCHEMA oms TO backorders_bi;
        GRANT SELECT ON ALL TABLES IN SCHEMA oms TO backorders_bi;
        ALTER DEFAULT PRIVILEGES IN SCHEMA oms GRANT SELECT ON TABLES TO backorders_bi;
        REVOKE ALL ON SCHEMA landing FROM backorders_bi;
        COMMENT ON ROLE backorders_bi IS 'Read-only access to the oms schema for BI tools; LOGIN users are members of it.';
    END IF;
END $$;
"""

# Comments only where none exists yet (so earlier migrations' comments stay).
COMMENT_MISSING = r"""
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES {values}) AS v(tbl, col, txt) LOOP
        IF EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = 'oms' AND table_name = r.tbl AND column_name = r.col)
           AND col_description(format('oms.%I', r.tbl)::regclass,
                               (SELECT attnum FROM pg_attribute
                                WHERE attrelid = format('oms.%I', r.tbl)::regclass AND attname = r.col)) IS NULL THEN
            EXECUTE format('COMMENT ON COLUMN oms.%I.%I IS %L', r.tbl, r.col, r.txt);
        END IF;
    END LOOP;
END $$;
"""


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def comment_missing_sql() -> str:
    values = ",\n".join(f"({_quote(t)}, {_quote(c)}, {_quote(txt)})"
                        for t, cols in COLUMN_COMMENTS.items() for c, txt in cols.items())
    return COMMENT_MISSING.replace("{values}", values)


def upgrade() -> None:
    op.execute(RUN_LOCK)
    op.execute(comment_missing_sql())
    op.execute(BI_VIEWS)
    op.execute(BI_ROLE)


def downgrade() -> None:
    op.execute("""
        DROP VIEW IF EXISTS oms.exceptions_per_kind;
        DROP VIEW IF EXISTS oms.fill_rate_per_run;
        DROP VIEW IF EXISTS oms.backorders_by_sku_age;
        DROP TABLE IF EXISTS oms.run_lock;
        DROP INDEX IF EXISTS landing.stock_levels_landed;
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'backorders_bi') THEN
                REVOKE ALL ON ALL TABLES IN SCHEMA oms FROM backorders_bi;
                ALTER DEFAULT PRIVILEGES IN SCHEMA oms REVOKE SELECT ON TABLES FROM backorders_bi;
                REVOKE USAGE ON SCHEMA oms FROM backorders_bi;
            END IF;
        END $$;
    """)
