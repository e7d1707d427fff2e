-- Recompute the quantities, status and labels of the lines in {stg}.touched from the event tables
-- (shipment request lines, cancellations, attempts). Used by publish and by the rewind of runs.
WITH k AS (SELECT DISTINCT order_id, line_id FROM {stg}.touched),
alloc AS (
    SELECT l.order_id, l.line_id,
           coalesce(sum(l.quantity) FILTER (WHERE r.status = 'REQUESTED'), 0) AS qa,
           coalesce(sum(l.quantity) FILTER (WHERE r.status = 'SHIPPED'), 0) AS qs
    FROM k JOIN oms.shipment_request_lines l USING (order_id, line_id)
    JOIN oms.shipment_requests r USING (shipment_request_id)
    GROUP BY l.order_id, l.line_id
),
canc AS (
    SELECT c.order_id, c.line_id, sum(c.quantity) AS qc
    FROM k JOIN oms.line_cancellations c USING (order_id, line_id)
    GROUP BY c.order_id, c.line_id
),
att AS (
    SELECT DISTINCT ON (a.order_id, a.line_id) a.order_id, a.line_id, a.qty_held, a.reason
    FROM k JOIN oms.backorder_attempts a USING (order_id, line_id)
    ORDER BY a.order_id, a.line_id, a.checked_at DESC
),
since AS (
    SELECT a.order_id, a.line_id, min(a.checked_at) AS first_bo
    FROM k JOIN oms.backorder_attempts a USING (order_id, line_id)
    WHERE a.qty_backordered > 0
    GROUP BY a.order_id, a.line_id
),
q AS (
    SELECT ol.order_id, ol.line_id, ol.qty_ordered,
           coalesce(alloc.qa, 0) AS qa, coalesce(alloc.qs, 0) AS qs, coalesce(canc.qc, 0) AS qc,
           greatest(ol.qty_ordered - coalesce(alloc.qa, 0) - coalesce(alloc.qs, 0) - coalesce(canc.qc, 0), 0) AS open,
           coalesce(att.qty_held, 0) AS last_held, att.reason, since.first_bo
    FROM k JOIN oms.order_lines ol USING (order_id, line_id)
    LEFT JOIN alloc USING (order_id, line_id)
    LEFT JOIN canc USING (order_id, line_id)
    LEFT JOIN att USING (order_id, line_id)
    LEFT JOIN since USING (order_id, line_id)
),
v AS (
    SELECT q.*, least(q.open, q.last_held) AS held, q.open - least(q.open, q.last_held) AS bo FROM q
)
UPDATE oms.order_lines ol SET
    qty_allocated = v.qa, qty_shipped = v.qs, qty_cancelled = v.qc,
    qty_held = v.held, qty_backordered = v.bo,
    is_backorder = v.bo > 0,
    backordered_since = CASE WHEN v.bo > 0 THEN coalesce(v.first_bo, %(t)s) END,
    wait_reason = CASE WHEN v.open > 0 THEN v.reason END,
    status = CASE WHEN v.bo > 0 THEN 'BACKORDERED'
                  WHEN v.held > 0 THEN 'ON_HOLD'
                  WHEN v.qa > 0 THEN 'ALLOCATED'
                  WHEN v.qs > 0 AND v.qs < v.qty_ordered - v.qc THEN 'PARTIALLY_SHIPPED'
                  WHEN v.qs > 0 THEN 'SHIPPED'
                  ELSE 'CANCELLED' END,
    updated_at = %(t)s
FROM v
WHERE ol.order_id = v.order_id AND ol.line_id = v.line_id
  AND (ol.qty_allocated, ol.qty_shipped, ol.qty_cancelled, ol.qty_held, ol.qty_backordered, ol.wait_reason,
       ol.backordered_since)
      IS DISTINCT FROM
      (v.qa, v.qs, v.qc, v.held, v.bo, CASE WHEN v.open > 0 THEN v.reason END,
       CASE WHEN v.bo > 0 THEN coalesce(v.first_bo, %(t)s) END)
  OR (ol.order_id = v.order_id AND ol.line_id = v.line_id AND ol.status = 'NEW');

-- orders of the touched lines: status is the first that applies among their lines
WITH o AS (SELECT DISTINCT order_id FROM {stg}.touched),
s AS (
    SELECT l.order_id,
           (array['BACKORDERED', 'ON_HOLD', 'ALLOCATED', 'PARTIALLY_SHIPPED', 'SHIPPED', 'CANCELLED'])[
             min(array_position(array['BACKORDERED', 'ON_HOLD', 'ALLOCATED', 'PARTIALLY_SHIPPED', 'SHIPPED', 'CANCELLED'],
                                l.status))] AS status
    FROM o JOIN oms.order_lines l USING (order_id)
    GROUP BY l.order_id
)
UPDATE oms.orders ord SET status = s.status, updated_at = %(t)s
FROM s WHERE ord.order_id = s.order_id AND ord.status IS DISTINCT FROM s.status;
