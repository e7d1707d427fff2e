-- Cancellations decided at T, staged BEFORE allocation so that no stock goes to them (lifecycle.stage_cancellations).
-- Only quantity that waits is cancelled: backordered and held quantity of lines of earlier runs, or a line new in this
-- run. One kind per line, in this precedence:
--   CUSTOMER     a cancel request (landing.customer_responses) received by T: backordered + held (or the new line)
--   FTC          FTC channels: a deadline of the rule passed without shipment (see docs/ftc.md): backordered + held
--   AUTO_CANCEL  T reached the line's auto_cancel_at: backordered quantity
-- Reasons are shown to the customer in the cancellation email. {stg}.lifecycle_channels holds the channel settings
-- and the run's refund due date per channel.
CREATE TABLE {stg}.cancellations (order_id text, line_id text, qty bigint, kind text, reason text,
                                  refund_due_at timestamptz);

WITH open_lines AS (     -- their orders read by key (OFFSET 0: per line), not by a scan of every order of the history
    SELECT l.order_id, l.line_id, o.store, o.ship_by_date, l.auto_cancel_at, false AS is_new,
           l.qty_backordered AS qty_bo, l.qty_backordered + l.qty_held AS qty_open
    FROM oms.order_lines l
    CROSS JOIN LATERAL (SELECT o.store, o.ship_by_date FROM oms.orders o WHERE o.order_id = l.order_id OFFSET 0) o
    WHERE l.qty_backordered + l.qty_held > 0
    UNION ALL
    SELECT n.order_id, n.line_id, o.store, o.ship_by_date, n.auto_cancel_at, true, 0, n.qty_ordered
    FROM {stg}.new_lines n JOIN {stg}.new_orders o USING (order_id)
),
buyer AS (
    SELECT DISTINCT r.order_id
    FROM landing.customer_responses r
    WHERE lower(trim(r.response)) = 'cancel' AND r.received_at <= %(t)s
      AND r.order_id IN (SELECT order_id FROM open_lines)
),
ftc AS (
    SELECT o.order_id, o.ship_by_date, d.notice_kind, d.notice_sent_at, d.deadline, d.deadline_kind, c.timezone
    FROM (SELECT DISTINCT order_id, store, ship_by_date FROM open_lines WHERE NOT is_new) o
    JOIN {stg}.lifecycle_channels c ON c.store = o.store AND c.ftc_rule
    LEFT JOIN oms.ftc_deadlines d USING (order_id)
),
ftc_due AS (
    SELECT f.order_id,
           CASE WHEN f.notice_kind IS NULL
                THEN format('we could not ship it by %%s, the date we had given you',
                            to_char(f.ship_by_date AT TIME ZONE f.timezone, 'YYYY-MM-DD'))
                WHEN f.deadline_kind = 'CONSENT'
                THEN format('we could not ship it by %%s and did not receive your agreement to the delay',
                            to_char(f.deadline AT TIME ZONE f.timezone, 'YYYY-MM-DD'))
                ELSE format('we could not ship it by the revised date of %%s',
                            to_char(f.deadline AT TIME ZONE f.timezone, 'YYYY-MM-DD'))
           END AS reason
    FROM ftc f
    WHERE (f.notice_kind IS NULL AND %(t)s >= f.ship_by_date)
       OR (f.deadline IS NOT NULL AND %(t)s >= f.deadline
           AND NOT (f.deadline_kind = 'CONSENT' AND EXISTS (
               SELECT 1 FROM landing.customer_responses r
               WHERE r.order_id = f.order_id AND lower(trim(r.response)) = 'consent' AND r.received_at <= %(t)s
                 AND coalesce(r.responded_at, r.received_at) BETWEEN f.notice_sent_at AND f.deadline)))
)
INSERT INTO {stg}.cancellations (order_id, line_id, qty, kind, reason, refund_due_at)
SELECT DISTINCT ON (ol.order_id, ol.line_id) ol.order_id, ol.line_id, x.qty, x.kind, x.reason, c.refund_due_at
FROM open_lines ol
JOIN {stg}.lifecycle_channels c ON c.store = ol.store
LEFT JOIN ftc_due f ON f.order_id = ol.order_id
LEFT JOIN buyer b ON b.order_id = ol.order_id       -- a join: an IN (sub-select) here ran once per open line
CROSS JOIN LATERAL (VALUES
    (1, 'CUSTOMER', ol.qty_open, 'cancelled at your request', b.order_id IS NOT NULL),
    (2, 'FTC', ol.qty_open, f.reason, f.reason IS NOT NULL),
    (3, 'AUTO_CANCEL', ol.qty_bo,
        format('still not back in stock %%s days after your order, so we cancelled it as announced',
               c.auto_cancel_days),
        NOT ol.is_new AND ol.auto_cancel_at <= %(t)s)
) AS x (rank, kind, qty, reason, applies)
WHERE x.applies AND x.qty > 0
ORDER BY ol.order_id, ol.line_id, x.rank;

-- Customer responses received since the last successful run that cannot be used are quarantined (and get a
-- REJECTED_MESSAGE exception after publish): no order id, an answer other than consent or cancel, an unknown order.
-- A response for an order not known yet still applies if the order arrives later.
INSERT INTO {stg}.quarantine (quarantine_id, source, source_ref, received_at, reason, raw, run_at)
SELECT DISTINCT ON (ref) 'Q-resp-' || ref, 'landing.customer_responses', ref, received_at, reason, raw, %(t)s
FROM (
    SELECT substr(md5(concat_ws('|', r.order_id, r.response, r.responded_at, r.received_at)), 1, 16) AS ref,
           r.received_at, row_to_json(r)::text AS raw,
           CASE WHEN nullif(trim(r.order_id), '') IS NULL THEN 'customer response without an order id'
                WHEN lower(trim(coalesce(r.response, ''))) NOT IN ('consent', 'cancel')
                THEN format('customer response %%s for order %%s: expected consent or cancel', r.response, r.order_id)
                ELSE format('customer response %%s for order %%s: no such order', r.response, r.order_id) END
               AS reason
    FROM landing.customer_responses r
    WHERE r.received_at <= %(t)s
      AND r.received_at > (SELECT coalesce(max(p.run_at), '-infinity') FROM oms.pipeline_runs p
                           WHERE p.run_at < %(t)s AND p.status = 'SUCCESS')
      AND (nullif(trim(r.order_id), '') IS NULL
           OR lower(trim(coalesce(r.response, ''))) NOT IN ('consent', 'cancel')
           OR NOT (EXISTS (SELECT 1 FROM oms.orders o WHERE o.order_id = r.order_id)
                   OR EXISTS (SELECT 1 FROM {stg}.new_orders o WHERE o.order_id = r.order_id)))
) x
ORDER BY ref;
