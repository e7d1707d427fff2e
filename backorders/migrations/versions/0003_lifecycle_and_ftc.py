"""lifecycle and ftc: the FTC trail on orders, delay-notice deadlines and consent, refund due dates, the FTC deadline view.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DDL = r"""
-- ---------------------------------------------------------------- the FTC trail on the order (a projection)
ALTER TABLE oms.orders
    ADD COLUMN IF NOT EXISTS ftc_status      text,
    ADD COLUMN IF NOT EXISTS revised_ship_by timestamptz,
    ADD COLUMN IF NOT EXISTS consent         text,
    ADD COLUMN IF NOT EXISTS cancel_reason   text,
    ADD COLUMN IF NOT EXISTS refund_due_at   timestamptz;
CREATE INDEX IF NOT EXISTS orders_ftc_trail ON oms.orders (order_id) WHERE ftc_status IS NOT NULL;
COMMENT ON COLUMN oms.orders.ftc_status IS 'FTC delay trail, recomputed every run from oms.delay_notices and oms.line_cancellations: null (no delay notice, no lifecycle cancellation), NOTICE_SENT, RENEWED_NOTICE_SENT, CONSENT_IMPLIED, CONSENT_EXPRESS, CANCELLED (FTC rule or automatic cancellation), CANCELLED_BY_BUYER.';
COMMENT ON COLUMN oms.orders.revised_ship_by IS 'Revised ship-by date of the latest delay notice (null: none sent, or the notice could give no date).';
COMMENT ON COLUMN oms.orders.consent IS 'Consent to the latest delay notice: IMPLIED (silence, revised date within 30 days of the ship-by date), EXPRESS (landing.customer_responses), NONE (not given, or not yet).';
COMMENT ON COLUMN oms.orders.cancel_reason IS 'Reason of the latest cancellation of kind CUSTOMER, FTC or AUTO_CANCEL, as told to the customer.';
COMMENT ON COLUMN oms.orders.refund_due_at IS 'Latest refund due date of those cancellations: the run time plus 7 working days (Monday to Friday, channel time zone).';

ALTER TABLE oms.line_cancellations ADD COLUMN IF NOT EXISTS refund_due_at timestamptz;
COMMENT ON COLUMN oms.line_cancellations.refund_due_at IS 'For cancellations of kind CUSTOMER, FTC and AUTO_CANCEL: when the refund is due (run time plus 7 working days, 16 CFR 435.1(c)); null for the others.';

-- ---------------------------------------------------------------- delay notices: deadlines and consent
ALTER TABLE oms.delay_notices
    ADD COLUMN IF NOT EXISTS consent_deadline timestamptz,
    ADD COLUMN IF NOT EXISTS responded_at     timestamptz,
    ADD COLUMN IF NOT EXISTS notification_id  text,
    ADD COLUMN IF NOT EXISTS lead_days        integer;
COMMENT ON COLUMN oms.delay_notices.sent_at IS 'T of the run that sent the notice (the run that wrote the row).';
COMMENT ON COLUMN oms.delay_notices.original_ship_by IS 'The order''s ship-by date (promised date, or origin plus ship_promise_days).';
COMMENT ON COLUMN oms.delay_notices.revised_ship_by IS 'Revised ship-by date told to the buyer: T plus the catalog''s restock lead time of the delayed SKUs; null when a SKU has none (indefinite delay).';
COMMENT ON COLUMN oms.delay_notices.consent IS 'IMPLIED: silence is consent (first notice, revised date within 30 days of the ship-by date), recorded when the ship-by date passes; EXPRESS: a consent response received in time; NONE: not (yet) given.';
COMMENT ON COLUMN oms.delay_notices.decided_at IS 'T of the run that recorded the consent.';
COMMENT ON COLUMN oms.delay_notices.consent_deadline IS 'When silence is not consent: the time by which express consent must have been given, otherwise the order is cancelled (ship-by + 30 days for a first notice, the replaced revised date for a renewed notice); null when silence is consent.';
COMMENT ON COLUMN oms.delay_notices.responded_at IS 'When the buyer gave the express consent (landing.customer_responses.responded_at).';
COMMENT ON COLUMN oms.delay_notices.notification_id IS 'The DELAY_OPTION_NOTICE or RENEWED_DELAY_NOTICE email in oms.notifications.';
COMMENT ON COLUMN oms.delay_notices.lead_days IS 'Restock lead time (days) the revised date was computed from; null: unknown.';

-- The standing FTC deadline of every order with a delay notice, from its latest notice.
CREATE OR REPLACE VIEW oms.ftc_deadlines AS
SELECT DISTINCT ON (n.order_id)
       n.order_id, n.kind AS notice_kind, n.sent_at AS notice_sent_at, n.original_ship_by, n.revised_ship_by,
       n.consent, n.consent_deadline,
       CASE WHEN n.consent_deadline IS NOT NULL AND n.consent <> 'EXPRESS' THEN n.consent_deadline
            ELSE n.revised_ship_by END AS deadline,
       CASE WHEN n.consent_deadline IS NOT NULL AND n.consent <> 'EXPRESS' THEN 'CONSENT'
            WHEN n.revised_ship_by IS NOT NULL THEN 'REVISED' END AS deadline_kind
FROM oms.delay_notices n
ORDER BY n.order_id, n.sent_at DESC, n.kind DESC;
COMMENT ON VIEW oms.ftc_deadlines IS 'Per order with a delay notice: the latest notice and its deadline. deadline_kind CONSENT: cancelled at deadline unless shipped or express consent given by then; REVISED: a renewed notice is due before the revised date; null deadline: indefinite delay expressly consented to.';
"""

DOWN = r"""
DROP VIEW IF EXISTS oms.ftc_deadlines;
DROP INDEX IF EXISTS oms.orders_ftc_trail;
ALTER TABLE oms.delay_notices DROP COLUMN IF EXISTS consent_deadline, DROP COLUMN IF EXISTS responded_at,
    DROP COLUMN IF EXISTS notification_id, DROP COLUMN IF EXISTS lead_days;
ALTER TABLE oms.line_cancellations DROP COLUMN IF EXISTS refund_due_at;
ALTER TABLE oms.orders DROP COLUMN IF EXISTS ftc_status, DROP COLUMN IF EXISTS revised_ship_by,
    DROP COLUMN IF EXISTS consent, DROP COLUMN IF EXISTS cancel_reason, DROP COLUMN IF EXISTS refund_due_at;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DOWN)
