-- Stock of run T, after cycle.stage_on_hand ({stg}.stock_intake, {stg}.on_hand) and the demand.
-- 1. The quarantined rows of the intake, and the rows of dropped files that could not be read (landing.file_rejects),
--    go to {stg}.quarantine with a stable source_ref; the data-quality gate checks that nothing is lost.
-- 2. The stock for the SKUs in demand: on hand at T minus quantity hard-allocated and not shipped (confirmations of
--    this run count as shipped) minus safety stock.
INSERT INTO {stg}.quarantine (quarantine_id, source, source_ref, received_at, reason, raw, run_at)
SELECT quarantine_id, 'landing.stock_levels', source_ref, received_at, problem,
       json_build_object('source_code', source_code, 'sku', sku, 'quantity', quantity, 'as_of', as_of)::text, %(t)s
FROM {stg}.stock_intake WHERE status = 'QUARANTINED';

-- rows of dropped files that could not be read, in the same window
INSERT INTO {stg}.quarantine (quarantine_id, source, source_ref, received_at, reason, raw, run_at)
SELECT 'Q-file-' || substr(r.file_sha256, 1, 16) || '-' || r.line_number, 'file:' || r.file_name,
       r.file_name || ':' || r.line_number, r.received_at, r.reason, r.raw, %(t)s
FROM landing.file_rejects r
WHERE r.received_at <= %(t)s
  AND r.received_at > (SELECT coalesce(max(run_at), '-infinity'::timestamptz)
                       FROM oms.pipeline_runs WHERE run_at < %(t)s AND status = 'SUCCESS');

-- Stock for the SKUs in demand: on hand minus quantity hard-allocated and not shipped (confirmations of this run count
-- as shipped) minus safety stock.
CREATE TABLE {stg}.stock AS
WITH skus AS (SELECT DISTINCT sku FROM {stg}.demand),
committed AS (
    SELECT r.source_code, l.sku, sum(l.quantity) AS qty
    FROM oms.shipment_requests r     -- the open requests (a partial index), their lines by key
    CROSS JOIN LATERAL (SELECT l.sku, l.quantity FROM oms.shipment_request_lines l
                        WHERE l.shipment_request_id = r.shipment_request_id OFFSET 0) l
    JOIN skus ON skus.sku = l.sku
    WHERE r.status = 'REQUESTED'
      AND r.shipment_request_id NOT IN (SELECT shipment_request_id FROM {stg}.confirmations)
    GROUP BY r.source_code, l.sku
)
SELECT h.source_code, h.sku, h.qty_on_hand, coalesce(c.qty, 0)::bigint AS qty_committed, h.qty_safety, h.as_of,
       greatest(h.qty_on_hand - coalesce(c.qty, 0) - h.qty_safety, 0)::bigint AS qty_available
FROM {stg}.on_hand h
JOIN skus USING (sku)
LEFT JOIN committed c USING (source_code, sku);
