-- Consent to delay notices at T (lifecycle.apply_after_publish), on each order's latest notice still without consent.
-- EXPRESS: a 'consent' response received by T, given after the notice and no later than its consent deadline,
--          for an order not cancelled (FTC or by the buyer) since the notice.
WITH latest AS (
    SELECT d.order_id, d.notice_kind AS kind, d.notice_sent_at AS sent_at, d.consent_deadline
    FROM oms.ftc_deadlines d
    WHERE d.consent = 'NONE'
      AND NOT EXISTS (SELECT 1 FROM oms.line_cancellations x WHERE x.order_id = d.order_id
                      AND x.kind IN ('FTC', 'CUSTOMER') AND x.run_at >= d.notice_sent_at)
),
given AS (
    SELECT l.order_id, l.kind, l.sent_at, min(coalesce(r.responded_at, r.received_at)) AS responded_at
    FROM latest l
    JOIN landing.customer_responses r ON r.order_id = l.order_id
    WHERE lower(trim(r.response)) = 'consent' AND r.received_at <= %(t)s
      AND coalesce(r.responded_at, r.received_at) >= l.sent_at
      AND (l.consent_deadline IS NULL OR coalesce(r.responded_at, r.received_at) <= l.consent_deadline)
    GROUP BY l.order_id, l.kind, l.sent_at
)
UPDATE oms.delay_notices n SET consent = 'EXPRESS', decided_at = %(t)s, responded_at = g.responded_at
FROM given g
WHERE n.order_id = g.order_id AND n.kind = g.kind AND n.sent_at = g.sent_at;

-- IMPLIED: a first notice whose revised date is within 30 days of the ship-by date (no consent deadline), once the
-- ship-by date has passed without a cancel request while the order still has quantity to ship.
UPDATE oms.delay_notices n SET consent = 'IMPLIED', decided_at = %(t)s
FROM oms.ftc_deadlines d
WHERE n.order_id = d.order_id AND n.kind = d.notice_kind AND n.sent_at = d.notice_sent_at
  AND n.kind = 'FIRST' AND n.consent = 'NONE' AND n.consent_deadline IS NULL AND n.revised_ship_by IS NOT NULL
  AND %(t)s >= n.original_ship_by
  AND NOT EXISTS (SELECT 1 FROM landing.customer_responses r WHERE r.order_id = n.order_id
                  AND lower(trim(r.response)) = 'cancel' AND r.received_at <= %(t)s)
  AND EXISTS (SELECT 1 FROM oms.order_lines l WHERE l.order_id = n.order_id
              AND l.qty_backordered + l.qty_held + l.qty_allocated > 0);
