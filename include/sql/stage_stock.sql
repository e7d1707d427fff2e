-- Stock of run T for the SKUs in demand: latest on-hand at or before T (as_of and received_at),
-- minus quantity hard-allocated and not shipped (confirmations of this run count as shipped), minus safety stock.
CREATE TABLE {stg}.stock AS
WITH skus AS (SELECT DISTINCT sku FROM {stg}.demand),
on_hand AS (
    SELECT DISTINCT ON (s.sku, s.source_code) s.source_code, s.sku, s.quantity
    FROM landing.stock_levels s JOIN skus USING (sku)
    WHERE s.as_of <= %(t)s AND s.received_at <= %(t)s
      AND s.source_code IN (SELECT source_code FROM {stg}.sources)
    ORDER BY s.sku, s.source_code, s.as_of DESC, s.received_at DESC
),
committed AS (
    SELECT r.source_code, l.sku, sum(l.quantity) AS qty
    FROM oms.shipment_requests r
    JOIN oms.shipment_request_lines l USING (shipment_request_id)
    JOIN skus ON skus.sku = l.sku
    WHERE r.status = 'REQUESTED'
      AND r.shipment_request_id NOT IN (SELECT shipment_request_id FROM {stg}.confirmations)
    GROUP BY r.source_code, l.sku
)
SELECT h.source_code, h.sku,
       floor(greatest(h.quantity, 0))::bigint AS qty_on_hand,
       coalesce(c.qty, 0)::bigint AS qty_committed,
       coalesce((SELECT max(f.qty) FROM {stg}.safety_stock f
                 WHERE f.source_code IN ('*', h.source_code) AND f.sku IN ('*', h.sku)), 0)::bigint AS qty_safety
FROM on_hand h
LEFT JOIN committed c USING (source_code, sku);
ALTER TABLE {stg}.stock ADD COLUMN qty_available bigint;
UPDATE {stg}.stock SET qty_available = greatest(qty_on_hand - qty_committed - qty_safety, 0);
