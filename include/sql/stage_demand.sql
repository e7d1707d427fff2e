-- Demand of run T: the lines new in this run and every line of earlier runs with backordered or held quantity.
-- {stg} is the run's staging schema. shipments_used counts the order's shipment requests of earlier runs.
CREATE TABLE {stg}.demand AS
SELECT n.order_id, n.line_id, n.line_number, n.sku, o.store, p.pool,
       o.priority_tier, o.origin_date, n.qty_ordered AS qty_open, n.backorderable,
       0 AS shipments_used, true AS is_new
FROM {stg}.new_lines n
JOIN {stg}.new_orders o USING (order_id)
JOIN {stg}.pools p USING (store)
UNION ALL
SELECT l.order_id, l.line_id, l.line_number, l.sku, o.store, p.pool,
       o.priority_tier, o.origin_date, l.qty_backordered + l.qty_held AS qty_open, l.backorderable,
       coalesce((SELECT max(r.shipment_number) FROM oms.shipment_requests r WHERE r.order_id = l.order_id), 0),
       false
FROM oms.order_lines l
JOIN oms.orders o USING (order_id)
JOIN {stg}.pools p USING (store)
WHERE l.qty_backordered + l.qty_held > 0;
CREATE INDEX ON {stg}.demand (pool);
