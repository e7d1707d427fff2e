"""shipment message bodies kept as the JSON text they were built as (json, not jsonb).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# A shipment message is the document written to the warehouse's file, read whole by the delivery worker: stored as
# built (json keeps the text, and so the key order of JSON-RPC, "jsonrpc", "id", "method", "params"), it is not parsed
# into jsonb's binary form on insert and printed again on delivery. At a million open lines that parse was about a
# third of queueing the messages. The ->, ->> and #> operators work on json as on jsonb; equality and containment do
# not. (Payment request bodies stay jsonb: they are posted with sorted keys, and json measured no faster for them.)
UPGRADE = """
ALTER TABLE oms.shipment_messages ALTER COLUMN body TYPE json USING body::json;
COMMENT ON COLUMN oms.shipment_messages.body IS
    'The magento.logistics.warehouse_management.request_shipment message (JSON-RPC 2.0): request, shipping address, '
    'lines; as built: json text, keys in order.';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("""
ALTER TABLE oms.shipment_messages ALTER COLUMN body TYPE jsonb USING body::jsonb;
COMMENT ON COLUMN oms.shipment_messages.body IS 'The magento.logistics.warehouse_management.request_shipment message (JSON-RPC 2.0): request, shipping address, lines.';
""")
