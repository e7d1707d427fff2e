"""Initial schema: landing inputs, oms outputs, views for people and BI.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DDL = r"""
CREATE SCHEMA IF NOT EXISTS landing;
CREATE SCHEMA IF NOT EXISTS oms;

-- ---------------------------------------------------------------- landing (append-only inputs)
CREATE TABLE IF NOT EXISTS landing.order_messages (
    message_id  bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    body        text NOT NULL
);
CREATE INDEX IF NOT EXISTS order_messages_received_at ON landing.order_messages (received_at);
COMMENT ON TABLE landing.order_messages IS 'One raw order message as received (normally a magento.sales.order_management.create JSON-RPC message); malformed ones are kept and quarantined, never refused at the door.';

CREATE TABLE IF NOT EXISTS landing.stock_levels (
    source_code text,
    sku         text,
    quantity    numeric,
    as_of       timestamptz,
    received_at timestamptz DEFAULT now()
);
CREATE INDEX IF NOT EXISTS stock_levels_key ON landing.stock_levels (sku, source_code, as_of DESC, received_at DESC);
COMMENT ON TABLE landing.stock_levels IS 'Absolute on-hand quantity of a SKU at a source as of a time; the latest as_of at or before the run time wins.';

CREATE TABLE IF NOT EXISTS landing.catalog_items (
    sku                text,
    backorders_allowed boolean NULL,
    restock_lead_days  integer NULL,
    updated_at         timestamptz
);
CREATE INDEX IF NOT EXISTS catalog_items_key ON landing.catalog_items (sku, updated_at DESC);
COMMENT ON TABLE landing.catalog_items IS 'Catalog flags per SKU; null means not set explicitly. The latest updated_at at or before the run time wins.';

CREATE TABLE IF NOT EXISTS landing.shipment_confirmations (
    shipment_request_id text,
    shipped_at          timestamptz,
    received_at         timestamptz DEFAULT now()
);
CREATE INDEX IF NOT EXISTS shipment_confirmations_received ON landing.shipment_confirmations (received_at);
COMMENT ON TABLE landing.shipment_confirmations IS 'Logistics confirms that a shipment request was handed to the carrier.';

CREATE TABLE IF NOT EXISTS landing.customer_responses (
    order_id     text,
    response     text,
    responded_at timestamptz,
    received_at  timestamptz DEFAULT now()
);
COMMENT ON TABLE landing.customer_responses IS 'The buyer''s answer to a delay notice (consent) or a cancellation request (cancel).';

-- ---------------------------------------------------------------- oms (outputs)
CREATE TABLE IF NOT EXISTS oms.pipeline_runs (
    run_id          text PRIMARY KEY,
    run_at          timestamptz NOT NULL UNIQUE,
    started_at      timestamptz,
    finished_at     timestamptz,
    status          text NOT NULL,
    airflow_run_id  text,
    messages_in     integer, orders_created integer, lines_created integer,
    messages_quarantined integer, messages_duplicate integer,
    demand_lines    integer,
    lines_allocated integer, lines_backordered integer, lines_held integer, lines_cancelled integer,
    qty_allocated   bigint,
    shipment_requests integer, shipments_confirmed integer,
    emails_queued   integer, exceptions_opened integer, exceptions_closed integer,
    stage_counts    jsonb NOT NULL DEFAULT '{}'::jsonb,
    dq_results      jsonb NOT NULL DEFAULT '[]'::jsonb,
    error           text
);
COMMENT ON TABLE oms.pipeline_runs IS 'One row per run time T of backorder_cycle: status, figures per stage and data-quality results. started_at/finished_at are wall-clock times of the latest execution.';

CREATE TABLE IF NOT EXISTS oms.consumed_messages (
    message_id  bigint PRIMARY KEY,
    run_at      timestamptz NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('PROCESSED', 'QUARANTINED', 'DUPLICATE')),
    order_id    text
);
CREATE INDEX IF NOT EXISTS consumed_messages_run ON oms.consumed_messages (run_at);
COMMENT ON TABLE oms.consumed_messages IS 'Which run consumed each landing.order_messages row and how: every message is consumed exactly once.';

CREATE TABLE IF NOT EXISTS oms.orders (
    order_id         text PRIMARY KEY,
    store            text NOT NULL,
    origin_date      timestamptz NOT NULL,
    customer_id      text, customer_type text, customer_segment text,
    customer_email   text, customer_name text, language text, country_code text,
    payment_method   text, payment_reference text, currency text,
    authorized_amount numeric, authorization_status text, gateway_id text, transaction_id text,
    last_authorized_at timestamptz,
    shipping_method  text,
    priority_tier    integer NOT NULL,
    promised_date    timestamptz,
    ship_by_date     timestamptz,
    status           text NOT NULL,
    message_id       bigint NOT NULL,
    content_hash     text NOT NULL,
    order_attributes jsonb,
    raw_order        jsonb NOT NULL,
    created_run_at   timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_created_run ON oms.orders (created_run_at);
COMMENT ON TABLE oms.orders IS 'One row per accepted order. status aggregates its lines (first of BACKORDERED, ON_HOLD, ALLOCATED, PARTIALLY_SHIPPED, SHIPPED, CANCELLED).';
COMMENT ON COLUMN oms.orders.ship_by_date IS 'FTC ship-by date: the promised date, or origin_date plus the channel''s ship_promise_days.';
COMMENT ON COLUMN oms.orders.priority_tier IS 'Priority tier from priority.yaml; lower tiers get scarce stock first.';
COMMENT ON COLUMN oms.orders.raw_order IS 'params.order exactly as received, with every field the pipeline does not use.';

CREATE TABLE IF NOT EXISTS oms.order_lines (
    order_id        text NOT NULL REFERENCES oms.orders (order_id),
    line_id         text NOT NULL,
    line_number     integer NOT NULL,
    sku             text NOT NULL,
    product_name    text,
    qty_ordered     integer NOT NULL CHECK (qty_ordered > 0),
    qty_allocated   integer NOT NULL DEFAULT 0,
    qty_shipped     integer NOT NULL DEFAULT 0,
    qty_backordered integer NOT NULL DEFAULT 0,
    qty_held        integer NOT NULL DEFAULT 0,
    qty_cancelled   integer NOT NULL DEFAULT 0,
    status          text NOT NULL,
    is_backorder    boolean NOT NULL DEFAULT false,
    backorderable   boolean NOT NULL,
    backorder_decided_by text NOT NULL CHECK (backorder_decided_by IN ('line_attribute', 'catalog', 'channel')),
    backordered_since timestamptz,
    auto_cancel_at  timestamptz,
    wait_reason     text,
    gross_amount    numeric, net_amount numeric, tax_amount numeric,
    promise_delivery_date timestamptz,
    created_run_at  timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (order_id, line_id),
    CHECK (qty_ordered = qty_allocated + qty_shipped + qty_backordered + qty_held + qty_cancelled)
);
CREATE INDEX IF NOT EXISTS order_lines_open ON oms.order_lines (sku)
    WHERE qty_backordered + qty_held > 0;
COMMENT ON TABLE oms.order_lines IS 'One row per order line with its quantities; ordered = allocated + shipped + backordered + held + cancelled always.';
COMMENT ON COLUMN oms.order_lines.is_backorder IS 'The backorder label: true while some quantity waits for stock.';
COMMENT ON COLUMN oms.order_lines.backorder_decided_by IS 'Which rule decided whether the line may be backordered: line_attribute, catalog or channel.';
COMMENT ON COLUMN oms.order_lines.backordered_since IS 'T of the first run that could not allocate the line, while it is a backorder.';
COMMENT ON COLUMN oms.order_lines.wait_reason IS 'Why the line waits, in words for a support agent.';

CREATE TABLE IF NOT EXISTS oms.shipment_requests (
    shipment_request_id text PRIMARY KEY,
    order_id        text NOT NULL REFERENCES oms.orders (order_id),
    source_code     text NOT NULL,
    shipment_number integer NOT NULL,
    requested_at    timestamptz NOT NULL,
    status          text NOT NULL CHECK (status IN ('REQUESTED', 'SHIPPED')),
    shipped_at      timestamptz,
    shipped_run_at  timestamptz,
    UNIQUE (order_id, shipment_number)
);
CREATE INDEX IF NOT EXISTS shipment_requests_open ON oms.shipment_requests (source_code) WHERE status = 'REQUESTED';
CREATE INDEX IF NOT EXISTS shipment_requests_requested ON oms.shipment_requests (requested_at);
COMMENT ON TABLE oms.shipment_requests IS 'What logistics receives: one order, one source, the lines to ship. Id SR-<order>-<n>, n counting the order''s shipments.';

CREATE TABLE IF NOT EXISTS oms.shipment_request_lines (
    shipment_request_id text NOT NULL REFERENCES oms.shipment_requests (shipment_request_id),
    order_id  text NOT NULL,
    line_id   text NOT NULL,
    sku       text NOT NULL,
    quantity  integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (shipment_request_id, line_id),
    FOREIGN KEY (order_id, line_id) REFERENCES oms.order_lines (order_id, line_id)
);
CREATE INDEX IF NOT EXISTS shipment_request_lines_line ON oms.shipment_request_lines (order_id, line_id);
COMMENT ON TABLE oms.shipment_request_lines IS 'Hard allocations: a quantity of one order line committed to the source of its shipment request.';

CREATE TABLE IF NOT EXISTS oms.backorder_attempts (
    order_id        text NOT NULL,
    line_id         text NOT NULL,
    checked_at      timestamptz NOT NULL,
    qty_needed      integer NOT NULL,
    qty_available   integer NOT NULL,
    qty_allocated   integer NOT NULL,
    qty_backordered integer NOT NULL,
    qty_held        integer NOT NULL,
    qty_cancelled   integer NOT NULL,
    outcome         text NOT NULL,
    reason          text,
    PRIMARY KEY (order_id, line_id, checked_at),
    FOREIGN KEY (order_id, line_id) REFERENCES oms.order_lines (order_id, line_id)
);
CREATE INDEX IF NOT EXISTS backorder_attempts_checked ON oms.backorder_attempts (checked_at);
COMMENT ON TABLE oms.backorder_attempts IS 'One row per backordered or held line per run: what it needed, what was available, what it got, and the outcome.';

CREATE TABLE IF NOT EXISTS oms.line_cancellations (
    order_id  text NOT NULL,
    line_id   text NOT NULL,
    run_at    timestamptz NOT NULL,
    quantity  integer NOT NULL CHECK (quantity > 0),
    kind      text NOT NULL,
    reason    text NOT NULL,
    PRIMARY KEY (order_id, line_id, run_at, kind),
    FOREIGN KEY (order_id, line_id) REFERENCES oms.order_lines (order_id, line_id)
);
CREATE INDEX IF NOT EXISTS line_cancellations_run ON oms.line_cancellations (run_at);
COMMENT ON TABLE oms.line_cancellations IS 'Every cancelled quantity: NOT_BACKORDERABLE, AUTO_CANCEL, CUSTOMER or FTC, with the run that cancelled it.';

CREATE TABLE IF NOT EXISTS oms.exceptions (
    exception_id   text PRIMARY KEY,
    order_id       text,
    line_id        text,
    kind           text NOT NULL,
    severity       text NOT NULL CHECK (severity IN ('low', 'medium', 'high')),
    opened_at      timestamptz NOT NULL,
    closed_at      timestamptz,
    details        text,
    cause_key      text NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS exceptions_open ON oms.exceptions (kind) WHERE closed_at IS NULL;
COMMENT ON TABLE oms.exceptions IS 'The exception queue: one row per cause (never opened twice), closed by the run in which its cause is gone.';

CREATE TABLE IF NOT EXISTS oms.notifications (
    notification_id text PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    order_id        text,
    kind            text NOT NULL,
    recipient       text NOT NULL,
    subject         text NOT NULL,
    body            text NOT NULL,
    body_html       text,
    language        text,
    created_at      timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    sent_at         timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text
);
CREATE INDEX IF NOT EXISTS notifications_pending ON oms.notifications (created_at) WHERE status = 'PENDING';
COMMENT ON TABLE oms.notifications IS 'Outbox of customer emails: written by the run at T, delivered once (idempotency_key).';

CREATE TABLE IF NOT EXISTS oms.notification_lines (
    notification_id text NOT NULL REFERENCES oms.notifications (notification_id) ON DELETE CASCADE,
    kind     text NOT NULL,
    order_id text NOT NULL,
    line_id  text NOT NULL,
    PRIMARY KEY (kind, order_id, line_id)
);
COMMENT ON TABLE oms.notification_lines IS 'Which lines each notification told the customer about: a line is never notified twice for the same kind.';

CREATE TABLE IF NOT EXISTS oms.payment_requests (
    payment_request_id  text PRIMARY KEY,
    idempotency_key     text NOT NULL UNIQUE,
    order_id            text NOT NULL,
    shipment_request_id text,
    kind                text NOT NULL CHECK (kind IN ('REAUTHORIZE', 'CAPTURE', 'REFUND')),
    amount              numeric NOT NULL,
    currency            text,
    due_at              timestamptz,
    created_at          timestamptz NOT NULL,
    status              text NOT NULL DEFAULT 'PENDING',
    sent_at             timestamptz,
    attempts            integer NOT NULL DEFAULT 0,
    response            text
);
COMMENT ON TABLE oms.payment_requests IS 'Outbox of payment requests (re-authorizations, captures, refunds) for the payment service.';

CREATE TABLE IF NOT EXISTS oms.delay_notices (
    order_id        text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('FIRST', 'RENEWED')),
    sent_at         timestamptz NOT NULL,
    original_ship_by timestamptz NOT NULL,
    revised_ship_by timestamptz,
    consent         text NOT NULL DEFAULT 'NONE' CHECK (consent IN ('IMPLIED', 'EXPRESS', 'NONE')),
    decided_at      timestamptz,
    PRIMARY KEY (order_id, kind, sent_at)
);
COMMENT ON TABLE oms.delay_notices IS 'FTC delay option notices sent per order, with the revised date and the consent (implied, express or none).';

CREATE TABLE IF NOT EXISTS oms.storefront_availability (
    store         text NOT NULL,
    sku           text NOT NULL,
    available_qty integer NOT NULL,
    backorderable boolean NOT NULL,
    message       text NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (store, sku)
);
COMMENT ON TABLE oms.storefront_availability IS 'What the storefront shows per channel and SKU: In stock, the channel''s availability message, or Out of stock.';

CREATE TABLE IF NOT EXISTS oms.quarantine (
    quarantine_id text PRIMARY KEY,
    source        text NOT NULL,
    source_ref    text NOT NULL,
    received_at   timestamptz,
    reason        text NOT NULL,
    raw           text,
    run_at        timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_run ON oms.quarantine (run_at);
COMMENT ON TABLE oms.quarantine IS 'Input that could not be used, kept whole with the precise reason: nothing is dropped silently.';

-- ---------------------------------------------------------------- views for people and BI
CREATE OR REPLACE VIEW oms.allocation_queue AS
SELECT l.order_id, l.line_id, l.line_number, o.store, l.sku, l.product_name,
       l.qty_ordered, l.qty_allocated, l.qty_shipped, l.qty_backordered, l.qty_held, l.qty_cancelled,
       CASE WHEN l.qty_backordered > 0 THEN 'BACKORDER' ELSE 'ON HOLD' END AS label,
       l.status, l.backorder_decided_by, l.backordered_since,
       o.origin_date,
       floor(extract(epoch FROM (r.run_at - o.origin_date)) / 86400)::integer AS age_days,
       a.attempts, a.last_attempt_at, a.last_outcome,
       l.auto_cancel_at, l.wait_reason, o.ship_by_date, o.priority_tier
FROM oms.order_lines l
JOIN oms.orders o USING (order_id)
CROSS JOIN LATERAL (SELECT coalesce(max(run_at), now()) AS run_at FROM oms.pipeline_runs WHERE status = 'SUCCESS') r
LEFT JOIN LATERAL (
    SELECT count(*)::integer AS attempts, max(checked_at) AS last_attempt_at,
           (array_agg(outcome ORDER BY checked_at DESC))[1] AS last_outcome
    FROM oms.backorder_attempts b WHERE b.order_id = l.order_id AND b.line_id = l.line_id
) a ON true
WHERE l.qty_backordered + l.qty_held > 0;
COMMENT ON VIEW oms.allocation_queue IS 'Every line with backordered or held quantity: label, age (at the latest run), attempts so far, last attempt, auto-cancel date and why it waits.';

CREATE OR REPLACE VIEW oms.exception_queue AS
SELECT e.*, o.store
FROM oms.exceptions e
LEFT JOIN oms.orders o USING (order_id)
WHERE e.closed_at IS NULL
ORDER BY CASE e.severity WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END, e.opened_at, e.exception_id;
COMMENT ON VIEW oms.exception_queue IS 'Open exceptions, most severe and oldest first.';
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS oms CASCADE; DROP SCHEMA IF EXISTS landing CASCADE;")
