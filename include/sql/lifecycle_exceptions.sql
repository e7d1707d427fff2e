-- Exceptions of the lifecycle at T (lifecycle.apply_after_publish, after this run's delay notices are recorded).
-- FTC_DEADLINE (high): an order of an FTC channel with quantity not yet shipped whose standing deadline is near
-- (within %(margin)s) or passed. The deadline is the ship-by date while no notice was sent, else the latest notice's
-- (oms.ftc_deadlines). One exception per (order, deadline); it closes when the order has nothing left to ship
-- (shipped or cancelled) or its deadline moved (a new notice, a consent).
CREATE TABLE {stg}.ftc_near AS
WITH unshipped AS (
    SELECT order_id, sum(qty_backordered + qty_held)::bigint AS qty_open, sum(qty_allocated)::bigint AS qty_allocated
    FROM oms.order_lines
    WHERE qty_backordered + qty_held + qty_allocated > 0
    GROUP BY order_id
),
cur AS (    -- the unshipped orders read by key (OFFSET 0: per order), not by a scan of every order of the history
    SELECT u.order_id, u.qty_open, u.qty_allocated, c.timezone,
           CASE WHEN d.order_id IS NULL THEN o.ship_by_date ELSE d.deadline END AS deadline,
           CASE WHEN d.order_id IS NULL THEN 'SHIP_BY' ELSE d.deadline_kind END AS deadline_kind
    FROM unshipped u
    CROSS JOIN LATERAL (SELECT o.store, o.ship_by_date FROM oms.orders o WHERE o.order_id = u.order_id OFFSET 0) o
    JOIN {stg}.lifecycle_channels c ON c.store = o.store AND c.ftc_rule
    LEFT JOIN oms.ftc_deadlines d USING (order_id)
)
SELECT cur.*, 'FTC_DEADLINE:' || order_id || ':'
              || to_char(deadline AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS cause_key
FROM cur
WHERE deadline IS NOT NULL AND %(t)s >= deadline - %(margin)s;

INSERT INTO oms.exceptions (exception_id, order_id, line_id, kind, severity, opened_at, details, cause_key)
SELECT 'EX-' || substr(md5(cause_key), 1, 16), order_id, NULL, 'FTC_DEADLINE', 'high', %(t)s,
       format('%%s open and %%s allocated not shipped; %%s %%s: %%s', qty_open, qty_allocated,
              CASE deadline_kind WHEN 'SHIP_BY' THEN 'ship-by date' WHEN 'CONSENT' THEN 'consent deadline'
                                 ELSE 'revised ship-by date' END,
              to_char(deadline AT TIME ZONE timezone, 'YYYY-MM-DD HH24:MI ') || timezone,
              CASE deadline_kind
                  WHEN 'SHIP_BY' THEN 'ship it or send a delay option notice before then'
                  WHEN 'CONSENT' THEN 'the order is cancelled then unless it ships or the buyer consents'
                  ELSE 'ship it or send a renewed notice before then' END),
       cause_key
FROM {stg}.ftc_near
ON CONFLICT (cause_key) DO NOTHING;

UPDATE oms.exceptions e SET closed_at = %(t)s
WHERE e.kind = 'FTC_DEADLINE' AND e.closed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM {stg}.ftc_near n WHERE n.cause_key = e.cause_key);

-- CANCEL_REQUEST_ALLOCATED (high): an order that must be cancelled (a buyer's cancel request, or an FTC cancellation)
-- still has quantity hard-allocated and not shipped. The pipeline cancels only waiting quantity; support must stop the
-- shipment at the warehouse. Closes when nothing of the order is allocated any more.
-- (Driven by the few orders with a cancel request or an FTC cancellation, whose lines are read by key.)
CREATE TABLE {stg}.cancel_allocated AS
WITH asked AS (
    SELECT DISTINCT r.order_id FROM landing.customer_responses r
    WHERE lower(trim(r.response)) = 'cancel' AND r.received_at <= %(t)s
),
ftc AS (SELECT DISTINCT x.order_id FROM oms.line_cancellations x WHERE x.kind = 'FTC'),
k AS (SELECT order_id FROM asked UNION SELECT order_id FROM ftc)
SELECT l.order_id, sum(l.qty_allocated)::bigint AS qty_allocated,
       CASE WHEN bool_or(a.order_id IS NOT NULL)
            THEN 'the buyer asked to cancel' ELSE 'the FTC rule cancelled the order' END AS why
FROM k JOIN oms.order_lines l USING (order_id)
LEFT JOIN asked a ON a.order_id = l.order_id
WHERE l.qty_allocated > 0
GROUP BY l.order_id;

INSERT INTO oms.exceptions (exception_id, order_id, line_id, kind, severity, opened_at, details, cause_key)
SELECT 'EX-' || substr(md5('CANCEL_REQUEST_ALLOCATED:' || order_id), 1, 16), order_id, NULL,
       'CANCEL_REQUEST_ALLOCATED', 'high', %(t)s,
       format('%%s: %%s allocated and not shipped; stop the shipment at the warehouse and cancel it', why,
              qty_allocated),
       'CANCEL_REQUEST_ALLOCATED:' || order_id
FROM {stg}.cancel_allocated
ON CONFLICT (cause_key) DO NOTHING;

UPDATE oms.exceptions e SET closed_at = %(t)s
WHERE e.kind = 'CANCEL_REQUEST_ALLOCATED' AND e.closed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM {stg}.cancel_allocated c WHERE c.order_id = e.order_id);

-- REJECTED_MESSAGE (medium) for each customer response quarantined by this run (lifecycle_cancellations.sql).
INSERT INTO oms.exceptions (exception_id, order_id, line_id, kind, severity, opened_at, details, cause_key)
SELECT 'EX-' || substr(md5(k.cause_key), 1, 16), nullif(trim(q.raw::json ->> 'order_id'), ''), NULL,
       'REJECTED_MESSAGE', 'medium', %(t)s, 'customer response quarantined: ' || q.reason, k.cause_key
FROM oms.quarantine q
CROSS JOIN LATERAL (SELECT 'REJECTED_MESSAGE:' || q.source || ':' || q.source_ref AS cause_key) k
WHERE q.source = 'landing.customer_responses' AND q.run_at = %(t)s
ON CONFLICT (cause_key) DO NOTHING;
