-- What publish writes that the run's staged rows and the state before the run determine, prepared beside the allocation
-- gate (cycle.prepare_publish; publish prepares it itself when it finds it missing). Reads oms, writes only {stg}: the
-- new shipment requests with their numbers, and the lines the run touches. derive_lines.sql follows in the same
-- transaction. Nothing publish writes changes what is read here: the new shipment requests and lines are the run's
-- own (read from {stg}), and the touched lines' events before the run are those of earlier runs.
DROP TABLE IF EXISTS {stg}.new_shipments, {stg}.touched;

-- one new shipment request per order and source, numbered after the order's earlier ones in source priority order
CREATE TABLE {stg}.new_shipments AS
SELECT a.order_id, a.source_code,
       d.shipments_used + dense_rank() OVER (PARTITION BY a.order_id
                                            ORDER BY array_position(c.sources, a.source_code), a.source_code)
           AS shipment_number
FROM (SELECT DISTINCT order_id, source_code FROM {stg}.allocations) a
JOIN (SELECT DISTINCT order_id, store, shipments_used FROM {stg}.demand) d USING (order_id)
JOIN {stg}.channels c ON c.store = d.store;

-- the lines whose quantities, status or labels may change: refresh_lines recomputes them from the events. A waiting
-- line that the run leaves exactly as it was (nothing allocated or cancelled, the same held and backordered split and
-- the same reason) is skipped: its recomputation would give its current values (its new attempt repeats the last one),
-- so the cost follows the lines that change rather than every waiting line.
CREATE TABLE {stg}.touched AS
SELECT d.order_id, d.line_id FROM {stg}.demand d JOIN {stg}.line_results r USING (order_id, line_id)
WHERE d.is_new OR r.qty_allocated <> 0 OR r.qty_cancelled <> 0 OR r.qty_held <> d.cur_held
   OR r.qty_backordered <> d.cur_backordered OR nullif(r.reason, '') IS DISTINCT FROM d.cur_wait_reason
UNION
SELECT l.order_id, l.line_id FROM oms.shipment_request_lines l JOIN {stg}.confirmations c USING (shipment_request_id)
UNION
SELECT order_id, line_id FROM {stg}.cancellations;
ANALYZE {stg}.touched;
