"""each order's params.order as received kept in oms.order_documents, out of the oms.orders rows.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# raw_order was 1.3 KB of a 1.7 KB oms.orders row at a million lines (PostgreSQL compresses a row only from 2 KB on,
# so it stayed inline). Every run updates the status of the orders it touches, and an update writes the whole row:
# the 205,000 orders of a 1M cycle were 399 MB of new row versions, about 4 s of publish's one transaction (2 s now).
# Written once and read by key (the shipment messages take the shipping address from it), the document lives in a
# table of its own; the orders' rows are a fifth as wide. DROP COLUMN does not rewrite oms.orders: an order's row
# narrows when a run next updates it, or at once with VACUUM FULL oms.orders (docs/deploy.md).
UPGRADE = """
CREATE TABLE oms.order_documents (
    order_id        text PRIMARY KEY REFERENCES oms.orders (order_id),
    raw_order       jsonb NOT NULL,
    created_run_at  timestamptz NOT NULL
);
INSERT INTO oms.order_documents (order_id, raw_order, created_run_at)
SELECT order_id, raw_order, created_run_at FROM oms.orders ORDER BY order_id;
CREATE INDEX order_documents_created_run ON oms.order_documents (created_run_at);
ANALYZE oms.order_documents;
ALTER TABLE oms.orders DROP COLUMN raw_order;
COMMENT ON TABLE oms.order_documents IS 'One row per accepted order: params.order exactly as received, with every field the pipeline does not use (kept out of oms.orders, whose rows every run updates).';
COMMENT ON COLUMN oms.order_documents.order_id IS 'The order (oms.orders).';
COMMENT ON COLUMN oms.order_documents.raw_order IS 'params.order exactly as received, with every field the pipeline does not use.';
COMMENT ON COLUMN oms.order_documents.created_run_at IS 'T of the run that accepted the order.';
"""

DOWNGRADE = """
ALTER TABLE oms.orders ADD COLUMN raw_order jsonb;
UPDATE oms.orders o SET raw_order = d.raw_order FROM oms.order_documents d WHERE d.order_id = o.order_id;
ALTER TABLE oms.orders ALTER COLUMN raw_order SET NOT NULL;
COMMENT ON COLUMN oms.orders.raw_order IS 'params.order exactly as received, with every field the pipeline does not use.';
DROP TABLE oms.order_documents;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
