-- Recompute the quantities, status and labels of the lines in {stg}.touched from the event tables
-- (shipment request lines, cancellations, attempts). Used by publish and by the rewind of runs.
-- The lines of {stg}.derived (publish: derive_lines.sql, from each line's state before the run and the run's own rows)
-- take their values from there; every other touched line (all of them in a rewind) is recomputed from its events.
-- Each recomputed line reads its own row and its own events through the indexes (LATERAL, per line; OFFSET 0 keeps each
-- lookup a per-line index probe): the cost follows the lines touched, not the history, and no join estimate can turn
-- into a scan of a whole table. The new values are computed first ({stg}.refreshed), and only the lines whose values
-- change are updated.
DROP TABLE IF EXISTS {stg}.refreshed, {stg}.refreshed_orders;
CREATE TABLE IF NOT EXISTS {stg}.derived (
    order_id text, line_id text, qty_ordered integer, qty_allocated integer, qty_shipped integer, qty_cancelled integer,
    qty_held integer, qty_backordered integer, cur_reason text, cur_since timestamptz, cur_status text, qa bigint,
    qs bigint, qc bigint, open bigint, last_held integer, reason text, first_bo timestamptz);
CREATE TABLE {stg}.refreshed AS
WITH q AS (
    SELECT * FROM {stg}.derived
    UNION ALL
    SELECT k.order_id, k.line_id, ol.qty_ordered, ol.qty_allocated, ol.qty_shipped, ol.qty_cancelled,
           ol.qty_held, ol.qty_backordered, ol.wait_reason AS cur_reason, ol.backordered_since AS cur_since,
           ol.status AS cur_status, alloc.qa, alloc.qs, canc.qc,
           greatest(ol.qty_ordered - alloc.qa - alloc.qs - canc.qc, 0) AS open,
           coalesce(att.qty_held, 0) AS last_held, att.reason, att.first_bo
    FROM (SELECT DISTINCT t.order_id, t.line_id FROM {stg}.touched t          -- in key order: probes walk the indexes
          WHERE NOT EXISTS (SELECT 1 FROM {stg}.derived d WHERE d.order_id = t.order_id AND d.line_id = t.line_id)
          ORDER BY 1, 2) k
    CROSS JOIN LATERAL (
        SELECT ol.qty_ordered, ol.qty_allocated, ol.qty_shipped, ol.qty_cancelled, ol.qty_held, ol.qty_backordered,
               ol.wait_reason, ol.backordered_since, ol.status
        FROM oms.order_lines ol WHERE ol.order_id = k.order_id AND ol.line_id = k.line_id OFFSET 0) ol
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(l.quantity) FILTER (WHERE r.status = 'REQUESTED'), 0) AS qa,
               coalesce(sum(l.quantity) FILTER (WHERE r.status = 'SHIPPED'), 0) AS qs
        FROM oms.shipment_request_lines l JOIN oms.shipment_requests r USING (shipment_request_id)
        WHERE l.order_id = k.order_id AND l.line_id = k.line_id) alloc
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(c.quantity), 0) AS qc FROM oms.line_cancellations c
        WHERE c.order_id = k.order_id AND c.line_id = k.line_id) canc
    CROSS JOIN LATERAL (     -- the line's attempts read once: the last one's held quantity and reason, the first backorder
        SELECT (array_agg(a.qty_held ORDER BY a.checked_at DESC))[1] AS qty_held,
               (array_agg(a.reason ORDER BY a.checked_at DESC))[1] AS reason,
               min(a.checked_at) FILTER (WHERE a.qty_backordered > 0) AS first_bo
        FROM oms.backorder_attempts a
        WHERE a.order_id = k.order_id AND a.line_id = k.line_id) att
),
v AS (
    SELECT q.*, least(q.open, q.last_held) AS held, q.open - least(q.open, q.last_held) AS bo FROM q
)
SELECT v.order_id, v.line_id, v.qty_ordered, v.qa, v.qs, v.qc, v.held, v.bo, v.open,
       CASE WHEN v.open > 0 THEN v.reason END AS wait_reason,
       CASE WHEN v.bo > 0 THEN coalesce(v.first_bo, %(t)s) END AS backordered_since
FROM v
WHERE v.cur_status = 'NEW'
   OR (v.qty_allocated, v.qty_shipped, v.qty_cancelled, v.qty_held, v.qty_backordered, v.cur_reason, v.cur_since)
      IS DISTINCT FROM
      (v.qa, v.qs, v.qc, v.held, v.bo, CASE WHEN v.open > 0 THEN v.reason END,
       CASE WHEN v.bo > 0 THEN coalesce(v.first_bo, %(t)s) END)
ORDER BY v.order_id, v.line_id;
ANALYZE {stg}.refreshed;

-- one index probe per refreshed line, and below per refreshed order, in key order: a hash join would read every
-- line (order) of the history; the orders' statuses in between are read by LATERAL key lookups either way
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
UPDATE oms.order_lines ol SET
    qty_allocated = v.qa, qty_shipped = v.qs, qty_cancelled = v.qc,
    qty_held = v.held, qty_backordered = v.bo,
    is_backorder = v.bo > 0,
    backordered_since = v.backordered_since,
    wait_reason = v.wait_reason,
    status = CASE WHEN v.bo > 0 THEN 'BACKORDERED'
                  WHEN v.held > 0 THEN 'ON_HOLD'
                  WHEN v.qa > 0 THEN 'ALLOCATED'
                  WHEN v.qs > 0 AND v.qs < v.qty_ordered - v.qc THEN 'PARTIALLY_SHIPPED'
                  WHEN v.qs > 0 THEN 'SHIPPED'
                  ELSE 'CANCELLED' END,
    updated_at = %(t)s
FROM {stg}.refreshed v
WHERE ol.order_id = v.order_id AND ol.line_id = v.line_id;

-- orders of the touched lines: status is the first that applies among their lines (each order's lines read by key)
CREATE TABLE {stg}.refreshed_orders AS
SELECT o.order_id, s.status
FROM (SELECT DISTINCT order_id FROM {stg}.touched ORDER BY 1) o
CROSS JOIN LATERAL (
    SELECT (array['BACKORDERED', 'ON_HOLD', 'ALLOCATED', 'PARTIALLY_SHIPPED', 'SHIPPED', 'CANCELLED'])[
             min(array_position(array['BACKORDERED', 'ON_HOLD', 'ALLOCATED', 'PARTIALLY_SHIPPED', 'SHIPPED', 'CANCELLED'],
                                l.status))] AS status
    FROM oms.order_lines l WHERE l.order_id = o.order_id HAVING count(*) > 0 OFFSET 0) s
CROSS JOIN LATERAL (SELECT ord.status FROM oms.orders ord WHERE ord.order_id = o.order_id OFFSET 0) cur
WHERE cur.status IS DISTINCT FROM s.status
ORDER BY o.order_id;
ANALYZE {stg}.refreshed_orders;

-- by key, as the lines above (the settings still hold): a hash join would read every order of the history
UPDATE oms.orders ord SET status = s.status, updated_at = %(t)s
FROM {stg}.refreshed_orders s WHERE ord.order_id = s.order_id;
RESET enable_hashjoin;
RESET enable_mergejoin;
