-- The new quantities of the lines publish touched, derived from each line's state before the run and the run's own
-- rows rather than from all of its events: refresh_lines.sql takes the lines of {stg}.derived from here and recomputes
-- every other touched line from its events (shipment request lines, cancellations, attempts), as the rewind does for
-- all of them. The columns are those of refresh_lines.sql's recomputation (q), and so are the values, line by line:
--   allocated = allocated before + this run's allocation - this run's confirmed shipments (of requests REQUESTED before);
--   shipped = shipped before + this run's confirmed shipments; cancelled = cancelled before + this run's cancellations;
--   the last attempt's held quantity and reason: this run's attempt, where publish.sql wrote one (the same condition);
--   the first backordered time: the line's own while it stays backordered, none for a line new in this run (so T).
-- Left out, and so recomputed from the events: a line backordered again after a time not backordered (its first
-- backordered time is in its attempts), and a line that still waits without an attempt of this run.
-- The state before the run is {stg}.demand's for the lines that waited or are new (stage_demand.sql read it); the other
-- touched lines (shipped, or cancelled in full before allocation) are read by key, in key order (OFFSET 0: per line).
-- The lines' quantities satisfy oms.order_lines' check (ordered = allocated + shipped + backordered + held + cancelled);
-- tests/test_cycle.py recomputes every line from its events after days of runs and finds nothing to change.
DROP TABLE IF EXISTS {stg}.derived;
-- hash joins of the staged tables: a join on (order_id, line_id) is estimated at a handful of rows (the two columns
-- are taken as independent), and a nested loop over half a million lines would then run once per line
SET LOCAL enable_nestloop = off;
CREATE TABLE {stg}.derived AS
WITH shipped AS (
    SELECT l.order_id, l.line_id, sum(l.quantity) AS qty
    FROM {stg}.confirmations c
    CROSS JOIN LATERAL (SELECT l.order_id, l.line_id, l.quantity FROM oms.shipment_request_lines l
                        WHERE l.shipment_request_id = c.shipment_request_id OFFSET 0) l
    GROUP BY 1, 2),
cancelled_before AS (SELECT order_id, line_id, sum(qty)::bigint AS qty FROM {stg}.cancellations GROUP BY 1, 2),
before AS (
    SELECT d.order_id, d.line_id, d.qty_ordered, d.cur_allocated AS qty_allocated, d.cur_shipped AS qty_shipped,
           d.cur_cancelled AS qty_cancelled, d.cur_held AS qty_held, d.cur_backordered AS qty_backordered,
           d.cur_wait_reason AS cur_reason, d.cur_since, d.cur_status, d.is_new,
           r.qty_allocated AS allocated, r.qty_cancelled + coalesce(cb.qty, 0) AS cancelled,
           NOT (d.is_new AND r.qty_allocated = d.qty_open) AS attempted,      -- as publish.sql's attempts
           r.qty_held AS at_held, nullif(r.reason, '') AS at_reason
    FROM {stg}.demand d
    JOIN {stg}.line_results r USING (order_id, line_id)
    LEFT JOIN cancelled_before cb USING (order_id, line_id)
    WHERE EXISTS (SELECT 1 FROM {stg}.touched t WHERE t.order_id = d.order_id AND t.line_id = d.line_id)
    UNION ALL
    SELECT k.order_id, k.line_id, ol.qty_ordered, ol.qty_allocated, ol.qty_shipped, ol.qty_cancelled, ol.qty_held,
           ol.qty_backordered, ol.wait_reason, ol.backordered_since, ol.status, ol.created_run_at = %(t)s,
           0, coalesce(cb.qty, 0), false, NULL, NULL
    FROM (SELECT DISTINCT t.order_id, t.line_id FROM {stg}.touched t
          WHERE NOT EXISTS (SELECT 1 FROM {stg}.demand d WHERE d.order_id = t.order_id AND d.line_id = t.line_id)
          ORDER BY 1, 2) k
    CROSS JOIN LATERAL (
        SELECT ol.qty_ordered, ol.qty_allocated, ol.qty_shipped, ol.qty_cancelled, ol.qty_held, ol.qty_backordered,
               ol.wait_reason, ol.backordered_since, ol.status, ol.created_run_at
        FROM oms.order_lines ol WHERE ol.order_id = k.order_id AND ol.line_id = k.line_id OFFSET 0) ol
    LEFT JOIN cancelled_before cb ON cb.order_id = k.order_id AND cb.line_id = k.line_id
),
q AS (
    SELECT b.*,
           b.qty_allocated + b.allocated - coalesce(s.qty, 0) AS qa,
           b.qty_shipped + coalesce(s.qty, 0) AS qs,
           b.qty_cancelled + b.cancelled AS qc,
           greatest(b.qty_ordered - b.qty_allocated - b.allocated - b.qty_shipped - b.qty_cancelled - b.cancelled, 0)
               AS open,
           CASE WHEN b.attempted THEN b.at_held ELSE 0 END AS last_held,
           CASE WHEN b.attempted THEN b.at_reason END AS reason,
           CASE WHEN b.qty_backordered > 0 THEN b.cur_since END AS first_bo
    FROM before b
    LEFT JOIN shipped s ON s.order_id = b.order_id AND s.line_id = b.line_id
)
SELECT order_id, line_id, qty_ordered, qty_allocated, qty_shipped, qty_cancelled, qty_held, qty_backordered,
       cur_reason, cur_since, cur_status, qa::bigint AS qa, qs::bigint AS qs, qc::bigint AS qc, open::bigint AS open,
       last_held::integer AS last_held, reason, first_bo
FROM q
WHERE CASE WHEN NOT attempted THEN open = 0                              -- no longer waits
           WHEN open - least(open, last_held) = 0 THEN true                 -- not backordered after the run
           WHEN is_new THEN true                                            -- new: backordered since T
           ELSE qty_backordered > 0 AND cur_since IS NOT NULL END;          -- still backordered, since then
RESET enable_nestloop;
ANALYZE {stg}.derived;
