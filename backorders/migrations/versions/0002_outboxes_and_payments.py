"""outboxes and payments: delivery state of the outboxes, payment request details and responses, shipment messages.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATUSES = "('PENDING', 'SENT', 'FAILED', 'SUPPRESSED')"

DDL = rf"""
-- ---------------------------------------------------------------- customer emails
ALTER TABLE oms.notifications DROP CONSTRAINT IF EXISTS notifications_status_check;
ALTER TABLE oms.notifications ADD CONSTRAINT notifications_status_check CHECK (status IN {STATUSES});
ALTER TABLE oms.notifications ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz;
CREATE INDEX IF NOT EXISTS notifications_created ON oms.notifications (created_at);
COMMENT ON COLUMN oms.notifications.status IS 'PENDING: to be sent; SENT: accepted by the SMTP server; FAILED: rejected for good, or max_attempts reached (last_error says why); SUPPRESSED: written by a run older than the delivery window (a backfill), never sent.';
COMMENT ON COLUMN oms.notifications.attempts IS 'Send attempts that reached the SMTP server (a server that cannot be reached does not count).';
COMMENT ON COLUMN oms.notifications.next_attempt_at IS 'After a temporary failure: not before this time (wall clock, exponential backoff). Null: now.';
COMMENT ON COLUMN oms.notifications.sent_at IS 'Wall-clock time the SMTP server accepted the message.';

-- ---------------------------------------------------------------- payment requests
ALTER TABLE oms.payment_requests
    ADD COLUMN IF NOT EXISTS line_id text,
    ADD COLUMN IF NOT EXISTS payment_method text,
    ADD COLUMN IF NOT EXISTS tax_amount numeric,
    ADD COLUMN IF NOT EXISTS reason text,
    ADD COLUMN IF NOT EXISTS body jsonb,
    ADD COLUMN IF NOT EXISTS last_error text,
    ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz,
    ADD COLUMN IF NOT EXISTS response_status integer;
ALTER TABLE oms.payment_requests DROP CONSTRAINT IF EXISTS payment_requests_status_check;
ALTER TABLE oms.payment_requests ADD CONSTRAINT payment_requests_status_check CHECK (status IN {STATUSES});
CREATE INDEX IF NOT EXISTS payment_requests_pending ON oms.payment_requests (created_at) WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS payment_requests_created ON oms.payment_requests (created_at);
CREATE INDEX IF NOT EXISTS payment_requests_order ON oms.payment_requests (order_id, kind);
COMMENT ON COLUMN oms.payment_requests.idempotency_key IS 'Sent as the Idempotency-Key header: CAPTURE/<shipment request> (partial capture), CAPTURE/<order> (one capture per order), REFUND/<order>/<line>/<T>/<cancellation kind>, REAUTHORIZE/<order>/<T>.';
COMMENT ON COLUMN oms.payment_requests.shipment_request_id IS 'CAPTURE: the shipment request it settles (for a method without partial capture: the order''s last one).';
COMMENT ON COLUMN oms.payment_requests.amount IS 'Gross amount (tax included) in the order currency: CAPTURE the shipped lines'' share, REFUND the cancelled quantity''s share, REAUTHORIZE what is still to be captured.';
COMMENT ON COLUMN oms.payment_requests.due_at IS 'REFUND: T plus refund_due_working_days working days (Monday to Friday, channel time zone). Otherwise T.';
COMMENT ON COLUMN oms.payment_requests.created_at IS 'T of the run that queued it.';
COMMENT ON COLUMN oms.payment_requests.status IS 'PENDING: to be posted (or collected by the payment service when backorders_payments is not configured); SENT: accepted (2xx); FAILED: refused (4xx) or max_attempts reached; SUPPRESSED: run older than the delivery window, never sent.';
COMMENT ON COLUMN oms.payment_requests.sent_at IS 'Wall-clock time the payment service accepted it.';
COMMENT ON COLUMN oms.payment_requests.attempts IS 'Posts that reached the payment service (or may have: a timeout counts).';
COMMENT ON COLUMN oms.payment_requests.response IS 'Body of the latest response (every response is in oms.payment_responses).';
COMMENT ON COLUMN oms.payment_requests.line_id IS 'REFUND: the cancelled line.';
COMMENT ON COLUMN oms.payment_requests.payment_method IS 'The order''s payment method (payment_methods.yaml decides partial capture and re-authorization).';
COMMENT ON COLUMN oms.payment_requests.tax_amount IS 'Tax included in amount.';
COMMENT ON COLUMN oms.payment_requests.reason IS 'Why: the cancellation kind and reason, the shipment request, or the re-authorization interval.';
COMMENT ON COLUMN oms.payment_requests.body IS 'The JSON body posted to the payment service (identical on every attempt).';
COMMENT ON COLUMN oms.payment_requests.last_error IS 'Why the latest attempt failed.';
COMMENT ON COLUMN oms.payment_requests.next_attempt_at IS 'After a temporary failure: not before this time (wall clock). Null: now.';
COMMENT ON COLUMN oms.payment_requests.response_status IS 'HTTP status of the latest response.';

CREATE TABLE IF NOT EXISTS oms.payment_responses (
    payment_request_id text NOT NULL REFERENCES oms.payment_requests (payment_request_id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    attempted_at  timestamptz NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('SENT', 'RETRY', 'FAILED')),
    http_status   integer,
    elapsed_ms    integer,
    body          text,
    error         text,
    PRIMARY KEY (payment_request_id, attempt)
);
COMMENT ON TABLE oms.payment_responses IS 'Every post of a payment request to the payment service and what came back (status, body, or the error such as a timeout). Wall-clock times; never rewound.';
COMMENT ON COLUMN oms.payment_responses.payment_request_id IS 'The payment request posted.';
COMMENT ON COLUMN oms.payment_responses.attempt IS 'Attempt number of the request (1, 2, ...).';
COMMENT ON COLUMN oms.payment_responses.attempted_at IS 'Wall-clock time the outcome was recorded.';
COMMENT ON COLUMN oms.payment_responses.outcome IS 'SENT (2xx), RETRY (5xx, 408, 409, 425, 429, timeout, dropped connection) or FAILED (other 4xx, or the last attempt).';
COMMENT ON COLUMN oms.payment_responses.http_status IS 'HTTP status of the response; null when none came back (timeout).';
COMMENT ON COLUMN oms.payment_responses.elapsed_ms IS 'Milliseconds from the post to the response (or to giving up).';
COMMENT ON COLUMN oms.payment_responses.body IS 'Response body (first 10,000 characters).';
COMMENT ON COLUMN oms.payment_responses.error IS 'Why the attempt did not succeed.';

-- ---------------------------------------------------------------- shipment messages
CREATE TABLE IF NOT EXISTS oms.shipment_messages (
    message_id          text PRIMARY KEY,
    idempotency_key     text NOT NULL UNIQUE,
    shipment_request_id text NOT NULL,
    order_id            text NOT NULL,
    source_code         text NOT NULL,
    created_at          timestamptz NOT NULL,
    body                jsonb NOT NULL,
    file_name           text NOT NULL,
    status              text NOT NULL DEFAULT 'PENDING' CHECK (status IN {STATUSES}),
    sent_at             timestamptz,
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    next_attempt_at     timestamptz
);
CREATE INDEX IF NOT EXISTS shipment_messages_pending ON oms.shipment_messages (created_at) WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS shipment_messages_created ON oms.shipment_messages (created_at);
COMMENT ON TABLE oms.shipment_messages IS 'Outbox of magento.logistics.warehouse_management.request_shipment messages, one per shipment request, written as <file_name> to the configured folder (SENT) or collected by logistics (PENDING).';
COMMENT ON COLUMN oms.shipment_messages.message_id IS 'SM-<shipment request>; also the JSON-RPC id of the message.';
COMMENT ON COLUMN oms.shipment_messages.idempotency_key IS 'REQUEST_SHIPMENT/<shipment request>: one message per shipment request, ever.';
COMMENT ON COLUMN oms.shipment_messages.shipment_request_id IS 'The shipment request (oms.shipment_requests) the message asks logistics to ship.';
COMMENT ON COLUMN oms.shipment_messages.order_id IS 'Order of the shipment request.';
COMMENT ON COLUMN oms.shipment_messages.source_code IS 'Source (warehouse) that ships it.';
COMMENT ON COLUMN oms.shipment_messages.created_at IS 'T of the run that created the shipment request and queued the message.';
COMMENT ON COLUMN oms.shipment_messages.body IS 'The magento.logistics.warehouse_management.request_shipment message (JSON-RPC 2.0): request, shipping address, lines.';
COMMENT ON COLUMN oms.shipment_messages.file_name IS 'Name of the file written to the shipment message folder.';
COMMENT ON COLUMN oms.shipment_messages.status IS 'PENDING: to be written (or collected by logistics when no folder is configured); SENT: written; FAILED: could not be written in max_attempts attempts; SUPPRESSED: run older than the delivery window, never written.';
COMMENT ON COLUMN oms.shipment_messages.sent_at IS 'Wall-clock time the file was written.';
COMMENT ON COLUMN oms.shipment_messages.attempts IS 'Write attempts.';
COMMENT ON COLUMN oms.shipment_messages.last_error IS 'Why the latest attempt failed.';
COMMENT ON COLUMN oms.shipment_messages.next_attempt_at IS 'After a failed attempt: not before this time (wall clock). Null: now.';

-- ---------------------------------------------------------------- for people
CREATE OR REPLACE VIEW oms.outbox_status AS
SELECT 'notifications'::text AS outbox, kind, status, count(*)::bigint AS messages, min(created_at) AS oldest_created_at,
       max(attempts) AS max_attempts, min(next_attempt_at) AS next_attempt_at
FROM oms.notifications GROUP BY kind, status
UNION ALL
SELECT 'payment_requests', kind, status, count(*), min(created_at), max(attempts), min(next_attempt_at)
FROM oms.payment_requests GROUP BY kind, status
UNION ALL
SELECT 'shipment_messages', 'REQUEST_SHIPMENT', status, count(*), min(created_at), max(attempts), min(next_attempt_at)
FROM oms.shipment_messages GROUP BY status;
COMMENT ON VIEW oms.outbox_status IS 'Per outbox, kind and status: how many rows, the oldest, the most attempts and the next retry. PENDING rows with attempts > 0 are being retried; FAILED rows need a person.';
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(rf"""
DROP VIEW IF EXISTS oms.outbox_status;
DROP TABLE IF EXISTS oms.shipment_messages;
DROP TABLE IF EXISTS oms.payment_responses;
DROP INDEX IF EXISTS oms.payment_requests_pending;
DROP INDEX IF EXISTS oms.payment_requests_created;
DROP INDEX IF EXISTS oms.payment_requests_order;
ALTER TABLE oms.payment_requests DROP CONSTRAINT IF EXISTS payment_requests_status_check;
ALTER TABLE oms.payment_requests DROP COLUMN IF EXISTS line_id, DROP COLUMN IF EXISTS payment_method,
    DROP COLUMN IF EXISTS tax_amount, DROP COLUMN IF EXISTS reason, DROP COLUMN IF EXISTS body,
    DROP COLUMN IF EXISTS last_error, DROP COLUMN IF EXISTS next_attempt_at, DROP COLUMN IF EXISTS response_status;
DROP INDEX IF EXISTS oms.notifications_created;
ALTER TABLE oms.notifications DROP COLUMN IF EXISTS next_attempt_at;
UPDATE oms.notifications SET status = 'FAILED', last_error = 'suppressed: run older than the delivery window' WHERE status = 'SUPPRESSED';
ALTER TABLE oms.notifications DROP CONSTRAINT IF EXISTS notifications_status_check;
ALTER TABLE oms.notifications ADD CONSTRAINT notifications_status_check CHECK (status IN ('PENDING', 'SENT', 'FAILED'));
""")
