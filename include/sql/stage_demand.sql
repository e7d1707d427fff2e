-- Demand of run T: the lines new in this run and every line of earlier runs with backordered or held quantity.
-- {stg} is the run's staging schema. shipments_used counts the order's shipment requests of earlier runs.
-- Quantity cancelled at T before allocation ({stg}.cancellations, lifecycle.stage_cancellations) is not demand; lines
-- cancelled in full drop out. cur_* (and qty_ordered): the line's state before the run (publish skips the lines the
-- run leaves as they were, and derives the new state of the others from it: derive_lines.sql). pool: NULL for a store
-- that channels.yaml does not list; cycle.extract_stock then gives the store its channel (the defaults) and the line
-- its pool.
CREATE TABLE {stg}.demand AS
WITH cancelled AS (SELECT order_id, line_id, sum(qty)::integer AS qty FROM {stg}.cancellations GROUP BY order_id, line_id)
SELECT * FROM (
SELECT n.order_id, n.line_id, n.line_number, n.sku, o.store, p.pool,
       o.priority_tier, o.origin_date, n.qty_ordered - coalesce(x.qty, 0) AS qty_open, n.backorderable,
       0 AS shipments_used, true AS is_new,
       0 AS cur_held, 0 AS cur_backordered, NULL::text AS cur_wait_reason,
       n.qty_ordered, 0 AS cur_allocated, 0 AS cur_shipped, 0 AS cur_cancelled, NULL::timestamptz AS cur_since,
       n.status AS cur_status
FROM {stg}.new_lines n
JOIN {stg}.new_orders o USING (order_id)
LEFT JOIN {stg}.pools p USING (store)
LEFT JOIN cancelled x USING (order_id, line_id)
UNION ALL
SELECT l.order_id, l.line_id, l.line_number, l.sku, o.store, p.pool,
       o.priority_tier, o.origin_date, l.qty_backordered + l.qty_held - coalesce(x.qty, 0) AS qty_open, l.backorderable,
       coalesce((SELECT max(r.shipment_number) FROM oms.shipment_requests r WHERE r.order_id = l.order_id), 0),
       false, l.qty_held, l.qty_backordered, l.wait_reason,
       l.qty_ordered, l.qty_allocated, l.qty_shipped, l.qty_cancelled, l.backordered_since, l.status
FROM oms.order_lines l      -- the waiting lines' orders by key (OFFSET 0: per line), not a scan of the history's
CROSS JOIN LATERAL (SELECT o.store, o.priority_tier, o.origin_date FROM oms.orders o
                    WHERE o.order_id = l.order_id OFFSET 0) o
LEFT JOIN {stg}.pools p USING (store)
LEFT JOIN cancelled x USING (order_id, line_id)
WHERE l.qty_backordered + l.qty_held > 0
) d
WHERE d.qty_open > 0;
CREATE INDEX ON {stg}.demand (pool);
