-- Exceptions of run T: opened once per cause (cause_key), closed by the run in which the cause is gone.
INSERT INTO oms.exceptions (exception_id, order_id, line_id, kind, severity, opened_at, details, cause_key)
SELECT 'EX-' || substr(md5(k.cause_key), 1, 16), k.order_id, NULL, 'REJECTED_MESSAGE', 'medium', %(t)s,
       'message ' || q.source_ref || ' quarantined: ' || q.reason, k.cause_key
FROM {stg}.quarantine q
JOIN {stg}.consumed c ON c.message_id::text = q.source_ref
CROSS JOIN LATERAL (SELECT 'REJECTED_MESSAGE:' || q.source || ':' || q.source_ref AS cause_key, c.order_id) k
ON CONFLICT (cause_key) DO NOTHING;

-- stock rows and file-drop lines quarantined by this run (their source_ref is stable: source/sku/as_of, file:line)
INSERT INTO oms.exceptions (exception_id, order_id, line_id, kind, severity, opened_at, details, cause_key)
SELECT 'EX-' || substr(md5(k.cause_key), 1, 16), NULL, NULL, 'REJECTED_MESSAGE', 'medium', %(t)s,
       q.source || ' ' || q.source_ref || ' quarantined: ' || q.reason, k.cause_key
FROM {stg}.quarantine q
CROSS JOIN LATERAL (SELECT 'REJECTED_MESSAGE:' || q.source || ':' || q.source_ref AS cause_key) k
WHERE q.source NOT IN ('landing.order_messages', 'landing.customer_responses')   -- those have their own
ON CONFLICT (cause_key) DO NOTHING;

-- backorders older than the channel's backorder_exception_days: severity high
WITH aged AS (
    SELECT l.order_id, l.line_id, l.sku, l.qty_backordered, l.backordered_since, o.store,
           'BACKORDER_AGE:' || l.order_id || ':' || l.line_id || ':'
               || to_char(l.backordered_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS cause_key,
           c.exception_days
    FROM oms.order_lines l      -- their orders by key (OFFSET 0: per line), not a scan of every order of the history
    CROSS JOIN LATERAL (SELECT o.store FROM oms.orders o WHERE o.order_id = l.order_id OFFSET 0) o
    JOIN {stg}.channels c ON c.store = o.store
    WHERE l.qty_backordered > 0 AND l.qty_backordered + l.qty_held > 0     -- the second uses the open-lines index
      AND l.backordered_since <= %(t)s - make_interval(days => c.exception_days)
)
INSERT INTO oms.exceptions (exception_id, order_id, line_id, kind, severity, opened_at, details, cause_key)
SELECT 'EX-' || substr(md5(cause_key), 1, 16), order_id, line_id, 'BACKORDER_AGE', 'high', %(t)s,
       format('%%s x %%s backordered since %%s: %%s reached the limit of %%s days', qty_backordered, sku,
              to_char(backordered_since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'), store, exception_days),
       cause_key
FROM aged
ON CONFLICT (cause_key) DO NOTHING;

UPDATE oms.exceptions e SET closed_at = %(t)s
WHERE e.kind = 'BACKORDER_AGE' AND e.closed_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM oms.order_lines l
      WHERE l.order_id = e.order_id AND l.line_id = e.line_id AND l.qty_backordered > 0
        AND e.cause_key = 'BACKORDER_AGE:' || l.order_id || ':' || l.line_id || ':'
               || to_char(l.backordered_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
