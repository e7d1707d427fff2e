"""performance: partial indexes so that a run's cost follows its open lines, not the closed history.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
-- exceptions.sql (backorders older than the channel's limit) reads only lines with backordered quantity
CREATE INDEX IF NOT EXISTS order_lines_backordered_since ON oms.order_lines (backordered_since)
    WHERE qty_backordered > 0;
COMMENT ON INDEX oms.order_lines_backordered_since IS
    'Lines with backordered quantity by backordered_since: the aged-backorder exceptions read these, not the history.';
-- queue_notifications reads the lines newly labelled backorder by the run (backordered_since = T)
CREATE INDEX IF NOT EXISTS order_lines_backorder_label ON oms.order_lines (backordered_since)
    WHERE is_backorder;
COMMENT ON INDEX oms.order_lines_backorder_label IS
    'Lines labelled backorder by backordered_since: the backorder notices of a run read these, not the history.';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS oms.order_lines_backorder_label; DROP INDEX IF EXISTS oms.order_lines_backordered_since;")
