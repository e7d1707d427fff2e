"""planner statistics and indexes so that a run's plans follow its open lines, not the closed history.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
-- The open lines are read as `qty_backordered + qty_held > 0` (the order_lines_open index). Without statistics on the
-- expression the planner guesses a third of all lines and joins the open lines to oms.orders with a scan of the whole
-- table; with them it knows how few lines are open and reads their orders by key.
CREATE STATISTICS IF NOT EXISTS oms.order_lines_open_qty ON (qty_backordered + qty_held) FROM oms.order_lines;
COMMENT ON STATISTICS oms.order_lines_open_qty IS
    'Distribution of backordered + held quantity: the planner''s estimate of the open lines.';
-- FTC deadlines look at the orders with quantity not yet shipped (open or allocated): by index, with statistics.
CREATE INDEX IF NOT EXISTS order_lines_unshipped ON oms.order_lines (order_id)
    WHERE qty_backordered + qty_held + qty_allocated > 0;
COMMENT ON INDEX oms.order_lines_unshipped IS
    'Lines with quantity not yet shipped (backordered, held or allocated): the FTC deadline checks read these.';
CREATE STATISTICS IF NOT EXISTS oms.order_lines_unshipped_qty ON (qty_backordered + qty_held + qty_allocated)
    FROM oms.order_lines;
-- Orders cancelled under the FTC rule (CANCEL_REQUEST_ALLOCATED exceptions): a handful among the cancellations.
CREATE INDEX IF NOT EXISTS line_cancellations_ftc ON oms.line_cancellations (order_id) WHERE kind = 'FTC';
COMMENT ON INDEX oms.line_cancellations_ftc IS 'Orders with an FTC cancellation: the CANCEL_REQUEST_ALLOCATED check.';
-- The rewind of a run deletes the lines it created and reopens the shipments it confirmed: by key, not by scan.
CREATE INDEX IF NOT EXISTS order_lines_created_run ON oms.order_lines (created_run_at);
CREATE INDEX IF NOT EXISTS shipment_requests_shipped_run ON oms.shipment_requests (shipped_run_at)
    WHERE shipped_run_at IS NOT NULL;
COMMENT ON INDEX oms.order_lines_created_run IS 'Lines by the run that created them: the rewind of a run deletes these.';
COMMENT ON INDEX oms.shipment_requests_shipped_run IS 'Shipments by the run that confirmed them: the rewind reopens these.';
-- The links of an email to its lines are deleted with the email (ON DELETE CASCADE, when a rewind removes the outbox
-- rows that never left): without an index each deleted email would scan every link.
CREATE INDEX IF NOT EXISTS notification_lines_notification ON oms.notification_lines (notification_id);
COMMENT ON INDEX oms.notification_lines_notification IS
    'Links by email: the cascade from a deleted notification finds its links by key.';
ANALYZE oms.order_lines;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS oms.notification_lines_notification; DROP INDEX IF EXISTS oms.line_cancellations_ftc; DROP STATISTICS IF EXISTS oms.order_lines_unshipped_qty; "
               "DROP INDEX IF EXISTS oms.order_lines_unshipped; DROP INDEX IF EXISTS oms.shipment_requests_shipped_run; DROP INDEX IF EXISTS oms.order_lines_created_run; "
               "DROP STATISTICS IF EXISTS oms.order_lines_open_qty;")
