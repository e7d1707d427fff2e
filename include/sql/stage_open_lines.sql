-- The waiting part of run T's demand, staged from oms alone (cycle.stage_open_lines, beside the orders' extract and
-- the cancellations): every line of earlier runs with backordered or held quantity, with its order's store, priority
-- and origin date, its pool, and the order's shipment requests of earlier runs (shipments_used). qty_open is its
-- waiting quantity before the cancellations of T; stage_demand.sql takes those off, drops the lines cancelled in full
-- and adds the run's new lines. cur_* (and qty_ordered): the line's state before the run (derive_lines.sql derives
-- the new state from it). pool: NULL for a store that channels.yaml does not list (cycle.extract_stock gives it one).
DROP TABLE IF EXISTS {stg}.open_lines;
CREATE TABLE {stg}.open_lines AS
SELECT l.order_id, l.line_id, l.line_number, l.sku, o.store, p.pool,
       o.priority_tier, o.origin_date, l.qty_backordered + l.qty_held AS qty_open, l.backorderable,
       coalesce((SELECT max(r.shipment_number) FROM oms.shipment_requests r WHERE r.order_id = l.order_id), 0)
           AS shipments_used,
       false AS is_new, l.qty_held AS cur_held, l.qty_backordered AS cur_backordered, l.wait_reason AS cur_wait_reason,
       l.qty_ordered, l.qty_allocated AS cur_allocated, l.qty_shipped AS cur_shipped, l.qty_cancelled AS cur_cancelled,
       l.backordered_since AS cur_since, l.status AS cur_status
FROM oms.order_lines l      -- the waiting lines' orders by key (OFFSET 0: per line), not a scan of the history's
CROSS JOIN LATERAL (SELECT o.store, o.priority_tier, o.origin_date FROM oms.orders o
                    WHERE o.order_id = l.order_id OFFSET 0) o
LEFT JOIN {stg}.pools p USING (store)
WHERE l.qty_backordered + l.qty_held > 0;
