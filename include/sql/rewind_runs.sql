-- Undo every effect of the runs at or after %(t)s, so that a re-run of T starts from the state the run before it left.
-- Event tables are tagged with the run time that wrote them; lines and orders are then recomputed from the events.
CREATE TEMP TABLE rewind_touched ON COMMIT DROP AS
SELECT order_id, line_id FROM oms.backorder_attempts WHERE checked_at >= %(t)s
UNION SELECT order_id, line_id FROM oms.line_cancellations WHERE run_at >= %(t)s
UNION SELECT l.order_id, l.line_id FROM oms.shipment_request_lines l JOIN oms.shipment_requests r USING (shipment_request_id)
      WHERE r.requested_at >= %(t)s OR r.shipped_run_at >= %(t)s;

-- Outboxes: only what never left is undone (PENDING or SUPPRESSED, never attempted). A row that was sent, failed, or
-- attempted (a timeout may have arrived) stays, with its notification_lines: the re-run's INSERT ... ON CONFLICT
-- (idempotency_key) DO NOTHING keeps it and nothing is delivered twice (docs/outboxes.md).
DELETE FROM oms.notifications WHERE created_at >= %(t)s AND status IN ('PENDING', 'SUPPRESSED') AND attempts = 0;
DELETE FROM oms.payment_requests WHERE created_at >= %(t)s AND status IN ('PENDING', 'SUPPRESSED') AND attempts = 0;
DELETE FROM oms.shipment_messages WHERE created_at >= %(t)s AND status IN ('PENDING', 'SUPPRESSED') AND attempts = 0;
-- re-authorizations move last_authorized_at; give it back what the remaining ones say
UPDATE oms.orders o SET last_authorized_at = coalesce(
    (SELECT max(p.created_at) FROM oms.payment_requests p
     WHERE p.order_id = o.order_id AND p.kind = 'REAUTHORIZE' AND p.status <> 'FAILED'), o.origin_date)
WHERE o.last_authorized_at >= %(t)s AND o.created_run_at < %(t)s;
DELETE FROM oms.delay_notices WHERE sent_at >= %(t)s;
UPDATE oms.delay_notices SET consent = 'NONE', decided_at = NULL, responded_at = NULL WHERE decided_at >= %(t)s;
DELETE FROM oms.exceptions WHERE opened_at >= %(t)s;
UPDATE oms.exceptions SET closed_at = NULL WHERE closed_at >= %(t)s;
DELETE FROM oms.backorder_attempts WHERE checked_at >= %(t)s;
DELETE FROM oms.line_cancellations WHERE run_at >= %(t)s;
DELETE FROM oms.shipment_request_lines WHERE shipment_request_id IN
    (SELECT shipment_request_id FROM oms.shipment_requests WHERE requested_at >= %(t)s);
DELETE FROM oms.shipment_requests WHERE requested_at >= %(t)s;
UPDATE oms.shipment_requests SET status = 'REQUESTED', shipped_at = NULL, shipped_run_at = NULL
    WHERE shipped_run_at >= %(t)s;
DELETE FROM oms.quarantine WHERE run_at >= %(t)s;
DELETE FROM oms.consumed_messages WHERE run_at >= %(t)s;
DELETE FROM oms.order_lines WHERE created_run_at >= %(t)s;
DELETE FROM oms.order_documents WHERE created_run_at >= %(t)s;
DELETE FROM oms.orders WHERE created_run_at >= %(t)s;
-- a current-state table, recomputed in full by every run (lifecycle_storefront.sql)
DELETE FROM oms.storefront_availability WHERE updated_at >= %(t)s;
DELETE FROM oms.dq_results WHERE run_at >= %(t)s;
DELETE FROM oms.pipeline_runs WHERE run_at >= %(t)s;
