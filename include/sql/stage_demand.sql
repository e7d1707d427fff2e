-- Demand of run T: the lines new in this run and every line of earlier runs with backordered or held quantity.
-- {stg} is the run's staging schema. The waiting lines were staged from oms beside the orders' extract
-- ({stg}.open_lines, stage_open_lines.sql: their state before the run in cur_*, their pool, shipments_used); that
-- table becomes the demand here, in place (cycle.extract_stock stages it first when stage_open_lines has not run).
-- Quantity cancelled at T before allocation ({stg}.cancellations, lifecycle.stage_cancellations) is not demand: it is
-- taken off, and lines cancelled in full drop out. Then the run's new lines are added (shipments_used 0, is_new, the
-- state before the run all zero). pool: NULL for a store that channels.yaml does not list; cycle.extract_stock then
-- gives the store its channel (the defaults) and the line its pool.
DROP TABLE IF EXISTS {stg}.demand;
ALTER TABLE {stg}.open_lines RENAME TO demand;

CREATE TEMP TABLE cancelled ON COMMIT DROP AS
SELECT order_id, line_id, sum(qty)::integer AS qty FROM {stg}.cancellations GROUP BY order_id, line_id;

UPDATE {stg}.demand d SET qty_open = d.qty_open - x.qty
FROM cancelled x WHERE x.order_id = d.order_id AND x.line_id = d.line_id;
DELETE FROM {stg}.demand WHERE qty_open <= 0;

INSERT INTO {stg}.demand
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
) d
WHERE d.qty_open > 0;
CREATE INDEX ON {stg}.demand (pool);
